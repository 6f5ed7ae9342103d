"""timm's own attention layers as registry entries ``timm:<name>``, for side-by-side comparison.

The names are the strings ``timm.layers.get_attn`` accepts (``TIMM_NAMES``; a test checks the
list against timm's source). Each entry builds ``get_attn(name)(channels)`` with timm's defaults,
which often differ from the papers (e.g. timm's SE rounds C/r up to a multiple of 8).
Some entries cannot work as shape-keeping modules on any backbone (timm 1.0.31's ``ge`` raises,
``bottleneck``/``halo``/``lambda`` need a fixed feature size or divisible sizes): they are not
hidden -- building them fails with timm's own error, and the zoo table lists the reason.
"""
from typing import Callable

TIMM_NAMES = (
    "se", "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord", "scoord", "ela", "strip",
    "sk", "splat", "lambda", "bottleneck", "halo", "nl", "bat",
)


def timm_factory(name: str) -> Callable:
    def factory(channels: int, **options):
        from timm.layers import get_attn

        return get_attn(name)(channels, **options)

    factory.__name__ = f"timm_{name}"
    factory.__doc__ = f"timm.layers.get_attn({name!r})(channels, **options) with timm's defaults"
    factory.placement = "block"
    return factory


# One attribute per name, so each can be an entry point in pyproject.toml.
for _name in TIMM_NAMES:
    globals()[_name] = timm_factory(_name)
