"""timm's own attention layers as registry entries ``timm:<name>``, for side-by-side comparison.

The names are the strings ``timm.layers.get_attn`` accepts (``TIMM_NAMES``; a test checks the
list against timm's source). Each entry builds ``get_attn(name)(channels)`` with timm's defaults,
which often differ from the papers (e.g. timm's SE rounds C/r up to a multiple of 8).

``sk``, ``splat``, ``lambda``, ``bottleneck`` and ``halo`` replace a block's spatial conv in timm's
own networks (SKNet, ResNeSt, LambdaNet, BoTNet, HaloNet), so they default to ``placement = "conv"``
and take the replaced conv's ``out_channels`` and ``stride`` (and ``feat_size``, which
``bottleneck`` needs) from the harness. The self-attention ones go in the last stage only
(``default_stages = "last"``, BoTNet's/HaloNet's layout); ``sk`` keeps timm's SelectiveKernel's
own BN + ReLU in place of the block's. Entries that still cannot work somewhere (timm 1.0.31's
``ge`` raises; ``halo``/``bat`` need sizes divisible by their block size) fail with timm's error,
and the zoo table lists the reason.
"""
from typing import Callable

TIMM_NAMES = (
    "se", "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord", "scoord", "ela", "strip",
    "sk", "splat", "lambda", "bottleneck", "halo", "nl", "bat",
)
CONV_LAYERS = ("sk", "splat")  # (in_channels, out_channels, stride=...)
SELF_ATTENTION = ("lambda", "bottleneck", "halo")  # (dim, dim_out, feat_size=..., stride=...)


def _get(name: str):
    from timm.layers import get_attn

    return get_attn(name)


def timm_factory(name: str) -> Callable:
    if name in SELF_ATTENTION:
        def factory(channels: int, out_channels: int = 0, stride: int = 1, feat_size=None, **options):
            return _get(name)(channels, out_channels or channels, feat_size=feat_size, stride=stride, **options)

        factory.default_stages = "last"
    elif name in CONV_LAYERS:
        def factory(channels: int, out_channels: int = 0, stride: int = 1, **options):
            return _get(name)(channels, out_channels or channels, stride=stride, **options)
    else:
        def factory(channels: int, **options):
            return _get(name)(channels, **options)

    factory.__name__ = f"timm_{name}"
    factory.__doc__ = f"timm.layers.get_attn({name!r})(channels, **options) with timm's defaults"
    factory.placement = "conv" if name in CONV_LAYERS + SELF_ATTENTION else "block"
    factory.includes_norm_act = name == "sk"
    return factory


# One attribute per name, so each can be an entry point in pyproject.toml.
for _name in TIMM_NAMES:
    globals()[_name] = timm_factory(_name)
