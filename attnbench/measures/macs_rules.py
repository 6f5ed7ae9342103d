"""The counting rules, in one table both MAC counters read, so they cannot drift apart.

Unit: one multiply-add (MAC) = 1. ``RULES`` maps an aten operator's base name (no namespace, no
overload, no in-place ``_``) to a rule; each rule's function takes the operator's arguments by
schema name (tensors as their shapes) and its output shapes, and returns MACs per category:

- ``product`` (conv, linear/addmm, mm, bmm, matmul, einsum): the multiply-adds of the product, bias
  folded in; computed by each counter's own library (fvcore's handles, torch's flop formulas / 2),
  so the two counters check each other here. Category ``conv_linear_matmul``.
- ``sdpa`` (scaled_dot_product_attention): its two matmuls (``conv_linear_matmul``) + a softmax of
  1 per attention weight (``elementwise``). Backward: four matmuls + 1 per attention weight.
- ``elementwise`` (arithmetic, activations, softmax, comparisons, where, masked_fill, square, erf,
  lerp, addcmul, cumsum, nearest upsampling, training dropout, ``*_backward`` of these): 1 per output element.
- ``reduction`` (mean, sum, amax, max, var, std, logsumexp, norm, ...): 1 per input element;
  ``reduction2`` (var_mean, std_mean: two statistics): 2 per input element.
- ``window`` (max/avg pool): output elements x prod(kernel) (backward: the same, from grad_output).
- ``adaptive_pool``: the sum of every output's window (= input elements when pooling to 1x1).
- ``norm``: 1 per element for normalise + affine, +1 per element for each statistic computed at run
  time: +2 (mean, variance) for LayerNorm, GroupNorm, InstanceNorm and train-mode BatchNorm; eval
  BatchNorm uses stored statistics: 1 per element. Backward: the same as its forward. Category ``norm``.
- ``interp4`` (bilinear upsampling, grid_sample): 4 per output element (a weighted sum of 4 points).
- ``sort``: elements x ceil(log2 n) along the sorted dim; ``topk``: elements x max(1, ceil(log2 k)).
- ``loss`` (nll_loss, forward and backward): 1 per target element (one pick per sample).
- ``free`` (views, copies, indexing/gather, concatenation, padding, tensor creation -- random draws such
  as ``bernoulli`` included --, eval dropout): 0. ``_safe_softmax`` (SDPA's math path on CPU, e.g. with
  dropout in training) is a softmax: element-wise.

An operator not in the table, or whose rule cannot read what it needs (a non-constant kernel size in
a trace), is *listed* as unhandled by the counter that met it -- never a silent zero.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence

MATMUL, ELEMENTWISE, NORM = "conv_linear_matmul", "elementwise", "norm"


class Shape(tuple):
    """A tensor argument, reduced to its shape (rules never need the values)."""


class RuleError(Exception):
    """A rule cannot read an argument it needs; the operator is listed as unhandled."""


def _names(rule: str, text: str) -> Dict[str, str]:
    return {name: rule for name in text.split()}


RULES: Dict[str, str] = {
    **_names(
        "product",
        "_convolution convolution conv1d conv2d conv3d linear addmm mm bmm baddbmm matmul einsum convolution_backward",
    ),
    **_names(
        "sdpa",
        "scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu "
        "_scaled_dot_product_flash_attention _scaled_dot_product_efficient_attention "
        "_scaled_dot_product_cudnn_attention",
    ),
    **_names(
        "sdpa_backward",
        "_scaled_dot_product_flash_attention_for_cpu_backward "
        "_scaled_dot_product_flash_attention_backward "
        "_scaled_dot_product_efficient_attention_backward "
        "_scaled_dot_product_cudnn_attention_backward",
    ),
    **_names(
        "elementwise",
        "add sub rsub mul div neg reciprocal abs exp exp2 expm1 log log2 log10 log1p sqrt "
        "rsqrt pow square erf erfc erfinv sign floor ceil round trunc frac sin cos atan2 fmod "
        "remainder floor_divide maximum minimum where clamp clamp_min clamp_max masked_fill "
        "gt lt ge le eq ne logical_and logical_or logical_xor logical_not bitwise_not "
        "__and__ __or__ lerp addcmul addcdiv cumsum cumprod nan_to_num "
        "relu relu6 leaky_relu elu celu selu prelu _prelu_kernel gelu silu mish sigmoid "
        "tanh hardsigmoid hardswish hardtanh softplus softsign threshold glu "
        "softmax _softmax _safe_softmax log_softmax _log_softmax native_dropout "
        "upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact2d "
        "threshold_backward sigmoid_backward tanh_backward hardsigmoid_backward "
        "hardswish_backward silu_backward gelu_backward mish_backward leaky_relu_backward "
        "elu_backward hardtanh_backward softplus_backward _softmax_backward_data "
        "_log_softmax_backward_data native_dropout_backward upsample_nearest2d_backward",
    ),
    **_names(
        "reduction",
        "mean sum nansum prod amax amin max min var std norm linalg_vector_norm logsumexp argmax argmin all any",
    ),
    **_names("reduction2", "var_mean std_mean"),
    **_names(
        "window",
        "max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices "
        "avg_pool1d avg_pool2d avg_pool3d max_pool2d_with_indices_backward avg_pool2d_backward",
    ),
    **_names(
        "adaptive_pool",
        "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d "
        "_adaptive_avg_pool2d_backward adaptive_max_pool1d adaptive_max_pool2d "
        "adaptive_max_pool2d_backward",
    ),
    **_names(
        "norm",
        "batch_norm native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
        "_native_batch_norm_legit_functional native_batch_norm_backward layer_norm native_layer_norm "
        "native_layer_norm_backward group_norm native_group_norm native_group_norm_backward "
        "instance_norm",
    ),
    **_names("interp4", "upsample_bilinear2d grid_sampler grid_sampler_2d"),
    **_names("sort", "sort argsort"),
    **_names("topk", "topk"),
    **_names("loss", "nll_loss nll_loss_nd nll_loss_forward nll_loss_backward nll_loss2d_forward nll_loss2d_backward"),
    **_names("dropout", "dropout feature_dropout alpha_dropout feature_alpha_dropout"),
    **_names(
        "free",
        "view view_as reshape reshape_as _unsafe_view _reshape_alias expand expand_as permute transpose "
        "t contiguous clone copy detach alias squeeze unsqueeze select slice narrow split "
        "split_with_sizes unsafe_split chunk unbind unflatten flatten movedim cat stack pad "
        "constant_pad_nd reflection_pad1d reflection_pad2d replication_pad2d repeat roll flip "
        "pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle unfold as_strided to "
        "type_as _to_copy lift_fresh lift_fresh_copy size Int ScalarImplicit numel dim empty "
        "empty_like empty_strided new_empty new_empty_strided new_zeros new_ones new_full zeros "
        "zeros_like ones ones_like full full_like fill eye arange randn rand randn_like rand_like bernoulli "
        "index index_select gather take_along_dim embedding "
        # gradients of views and slices: the incoming gradient written into zeros (data moved)
        "select_backward slice_backward unfold_backward diagonal_backward "
        # data moved or created, never computed on (nn.Unfold's patches, linspace/diag constants,
        # indexed writes): free like the copies and creations above
        "im2col linspace logspace diag diag_embed diagonal scalar_tensor index_put index_copy "
        "index_fill slice_scatter select_scatter diagonal_scatter as_strided_scatter masked_scatter",
    ),
}


def base_name(op: str) -> str:
    """'aten::relu_' / 'relu_' -> 'relu': in-place variants follow their out-of-place rule."""
    name = op.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def rule_of(op: str):
    return RULES.get(base_name(op))


def numel(shape) -> int:
    return math.prod(shape) if isinstance(shape, Shape) else 0


def _tensors(args: Dict[str, Any]) -> List[Shape]:
    return [v for v in args.values() if isinstance(v, Shape)]


def _first(args: Dict[str, Any]) -> Shape:
    shapes = _tensors(args)
    if not shapes:
        raise RuleError("no tensor argument")
    return shapes[0]


def _arg(args: Dict[str, Any], *names: str):
    for name in names:
        if args.get(name) is not None:
            return args[name]
    raise RuleError(f"argument {names[0]!r} is not a constant")


def _out(outs: Sequence[Shape]) -> int:
    return numel(outs[0]) if outs else 0


def elementwise(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: _out(outs)}


def reduction(op, args, outs) -> Dict[str, int]:
    # max(in, out) also covers the binary (broadcasting, element-wise) form of max/min.
    return {ELEMENTWISE: max(numel(_first(args)), _out(outs))}


def reduction2(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: 2 * numel(_first(args))}


def _pool_dims(op: str) -> int:
    return 3 if "3d" in op else 1 if "1d" in op else 2


def _pooled(args, outs) -> Shape:
    """The pooled (small) shape: the output, or in a backward op the incoming gradient."""
    grad = args.get("grad_output")
    return grad if isinstance(grad, Shape) else outs[0]


def window(op, args, outs) -> Dict[str, int]:
    kernel = _arg(args, "kernel_size")
    kernel = [kernel] if isinstance(kernel, int) else list(kernel)
    kernel = kernel * _pool_dims(op) if len(kernel) == 1 else kernel
    return {ELEMENTWISE: numel(_pooled(args, outs)) * math.prod(kernel)}


def _window_sum(n: int, o: int) -> int:
    """Sum of adaptive-pool window lengths along one dim (torch's start/end formula)."""
    return sum(-(-(i + 1) * n // o) - (i * n // o) for i in range(o))


def adaptive_pool(op, args, outs) -> Dict[str, int]:
    inp, pooled, dims = _arg(args, "self", "input"), _pooled(args, outs), _pool_dims(op)
    sums = (_window_sum(n, o) for n, o in zip(inp[-dims:], pooled[-dims:]))
    return {ELEMENTWISE: math.prod(inp[:-dims]) * math.prod(sums)}


def norm(op, args, outs) -> Dict[str, int]:
    base = base_name(op)
    if "batch_norm" in base and "instance" not in base:
        stats = "no_training" not in base and bool(args.get("training", args.get("train", False)))
    else:
        stats = True  # layer / group / instance norm always compute their statistics
    return {NORM: numel(_arg(args, "input", "self")) * (3 if stats else 1)}


def interp4(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: 4 * _out(outs)}


def _log2ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def sort(op, args, outs) -> Dict[str, int]:
    inp = _first(args)
    dim = args.get("dim") if isinstance(args.get("dim"), int) else -1
    return {ELEMENTWISE: numel(inp) * _log2ceil(inp[dim] if inp else 1)}


def topk(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: numel(_first(args)) * _log2ceil(int(_arg(args, "k")))}


def loss(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: numel(_arg(args, "target"))}


def dropout(op, args, outs) -> Dict[str, int]:
    return {ELEMENTWISE: _out(outs) if _arg(args, "train") else 0}


def _attention_sizes(args):
    q, k, v = _arg(args, "query"), _arg(args, "key"), _arg(args, "value")
    batch, weights = math.prod(q[:-2]), math.prod(q[:-2]) * q[-2] * k[-2]
    return weights, weights * q[-1] + weights * v[-1], batch


def sdpa(op, args, outs) -> Dict[str, int]:
    weights, matmuls, _ = _attention_sizes(args)
    return {MATMUL: matmuls, ELEMENTWISE: weights}


def sdpa_backward(op, args, outs) -> Dict[str, int]:
    weights, matmuls, _ = _attention_sizes(args)
    return {MATMUL: 2 * matmuls, ELEMENTWISE: weights}


def free(op, args, outs) -> Dict[str, int]:
    return {}


FUNCTIONS: Dict[str, Callable[..., Dict[str, int]]] = {
    "elementwise": elementwise,
    "reduction": reduction,
    "reduction2": reduction2,
    "window": window,
    "adaptive_pool": adaptive_pool,
    "norm": norm,
    "interp4": interp4,
    "sort": sort,
    "topk": topk,
    "loss": loss,
    "dropout": dropout,
    "sdpa": sdpa,
    "sdpa_backward": sdpa_backward,
    "free": free,
}


def apply(op: str, args: Dict[str, Any], outs: Sequence[Shape]) -> Dict[str, int]:
    """MACs per category for one call of a non-``product`` operator (raises RuleError, KeyError)."""
    return FUNCTIONS[RULES[base_name(op)]](base_name(op), args, outs)
