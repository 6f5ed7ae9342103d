"""timm's own attention layers as registry entries ``timm:<name>``, for side-by-side comparison.

The names are the strings ``timm.layers.get_attn`` accepts (``TIMM_NAMES``; a test checks the
list against timm's source). Each entry builds ``get_attn(name)(channels)`` with timm's defaults,
which often differ from the papers (e.g. timm's SE rounds C/r up to a multiple of 8).

``sk``, ``splat``, ``lambda``, ``bottleneck`` and ``halo`` replace a block's spatial conv in timm's
own networks (SKNet, ResNeSt, LambdaNet, BoTNet, HaloNet), so they default to ``placement = "conv"``
and take the replaced conv's ``out_channels`` and ``stride`` (and ``feat_size``, which
``bottleneck`` needs) from the harness. The self-attention ones go in the last stage only
(``default_stages = "last"``, BoTNet's/HaloNet's layout); ``sk`` keeps timm's SelectiveKernel's
own BN + ReLU in place of the block's. Entries that cannot work somewhere for a known, checked
reason (timm 1.0.31's ``ge`` raises in its constructor; ``halo``/``bat`` need feature maps divisible
by their block size; ``lambda`` keeps its input's width) raise ``Unsupported`` with that reason: the cell is stored as ``unsupported``,
counted apart from failures. Anything else keeps timm's own error and fails.
"""

from typing import Callable

TIMM_NAMES = (
    "se",
    "ese",
    "eca",
    "ecam",
    "ceca",
    "ge",
    "gc",
    "gca",
    "cbam",
    "lcbam",
    "coord",
    "scoord",
    "ela",
    "strip",
    "sk",
    "splat",
    "lambda",
    "bottleneck",
    "halo",
    "nl",
    "bat",
)
CONV_LAYERS = ("sk", "splat")  # (in_channels, out_channels, stride=...)
SELF_ATTENTION = ("lambda", "bottleneck", "halo")  # (dim, dim_out, feat_size=..., stride=...)
HALO_BLOCK, BAT_BLOCK = 8, 7  # timm's defaults: HaloAttn(block_size=8), BatNonLocalAttn(block_size=7)


def _get(name: str):
    from timm.layers import get_attn

    return get_attn(name)


def _build(name: str, *args, **kwargs):
    """timm's layer, with its known, checked limits raised as Unsupported (counted apart from failures)."""
    from ..errors import Unsupported

    try:
        return _get(name)(*args, **kwargs)
    except TypeError as exc:
        if name == "ge" and "multiple values for argument 'act_layer'" in str(exc):
            import timm

            raise Unsupported(
                f"timm {timm.__version__}'s GatherExcite passes act_layer to ConvMlp twice and raises in "
                "its constructor (upstream bug); use the first-party ge_theta"
            ) from exc
        raise


def _divisible(name: str, feat_size, block_size: int) -> None:
    """halo and bat tile the feature map in block_size x block_size windows: the site must divide."""
    from ..errors import Unsupported

    if feat_size is not None and any(int(s) % block_size for s in feat_size):
        raise Unsupported(
            f"timm's {name} needs feature maps divisible by block_size {block_size}; this site is "
            f"{feat_size[0]}x{feat_size[1]} (set block_size, or an input size that divides)"
        )


def timm_factory(name: str) -> Callable:
    if name in SELF_ATTENTION:

        def factory(channels: int, out_channels: int = 0, stride: int = 1, feat_size=None, **options):
            if name == "halo":
                _divisible(name, feat_size, options.get("block_size", HALO_BLOCK))
            if name == "lambda" and out_channels and out_channels != channels:
                from ..errors import Unsupported

                raise Unsupported(
                    f"timm's LambdaLayer reshapes its output to its input's channels (lambda_layer.py, "
                    f"forward), so it needs out_channels == channels; this site maps {channels} -> {out_channels}"
                )
            return _build(name, channels, out_channels or channels, feat_size=feat_size, stride=stride, **options)

        factory.default_stages = "last"
    elif name in CONV_LAYERS:

        def factory(channels: int, out_channels: int = 0, stride: int = 1, **options):
            return _build(name, channels, out_channels or channels, stride=stride, **options)
    elif name == "bat":

        def factory(channels: int, feat_size=None, **options):
            _divisible(name, feat_size, options.get("block_size", BAT_BLOCK))
            return _build(name, channels, **options)
    else:

        def factory(channels: int, **options):
            return _build(name, channels, **options)

    factory.__name__ = f"timm_{name}"
    factory.__doc__ = f"timm.layers.get_attn({name!r})(channels, **options) with timm's defaults"
    factory.placement = "conv" if name in CONV_LAYERS + SELF_ATTENTION else "block"
    factory.includes_norm_act = name == "sk"
    if name == "sk":  # documented limit: SelectiveKernelAttn batch-normalises the pooled (N, C) vector
        factory.min_train_batch = 2
        factory.limits_note = "timm's SelectiveKernelAttn: BatchNorm over the pooled vector"
    return factory


# One attribute per name, so each can be an entry point in pyproject.toml.
for _name in TIMM_NAMES:
    globals()[_name] = timm_factory(_name)
