"""FLOPs with a stated convention: one multiply-add = one FLOP (SE/CBAM/ECA papers' convention).

fvcore's ``FlopCountAnalysis`` counts convolutions, linears, matmuls and norms but skips the
operators attention modules are made of (mean, amax, sigmoid, softmax, mul, add, max-pool,
ReLU), which makes SE look ~5x cheaper than it is. We add handlers for those:

- a reduction (mean, sum, amax/max, var/std, adaptive max pool): one FLOP per *input* element;
- a windowed pool (max/avg_pool2d): one FLOP per output element per window position
  (equal to the input size for non-overlapping windows);
- an element-wise op (add, mul, div, sigmoid, ReLU, softmax, ...): one FLOP per *output* element;
- views, copies, tensor creation and eval-mode dropout (view, expand, permute, cat, pad, eye, ...): free.

The record keeps the fvcore part (equal to fvcore's own total) and the added element-wise
part apart, and lists every operator still unhandled -- nothing is dropped silently.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict

import torch
from torch import nn

from ..attach import AttentionSlot
from .record import Measurement

TAG = "elementwise:"

ELEMENTWISE_OPS = [
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "reciprocal", "abs",
    "exp", "log", "sqrt", "rsqrt", "pow", "maximum", "minimum", "where", "clamp", "clamp_", "clamp_min",
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "gelu", "silu", "silu_", "mish",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "hardsigmoid", "hardsigmoid_", "hardswish", "hardswish_",
    "hardtanh", "hardtanh_", "softplus", "softmax", "log_softmax",
]
REDUCTION_OPS = ["mean", "sum", "amax", "amin", "max", "min", "var", "std", "adaptive_max_pool2d", "norm", "linalg_vector_norm"]
WINDOW_OPS = ["max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d"]
# Views and copies fvcore does not already ignore: free by the convention above.
FREE_OPS = ["expand_as", "view_as", "reshape_as", "repeat", "clone", "unflatten", "movedim", "pixel_shuffle",
            "pixel_unshuffle", "channel_shuffle", "contiguous", "alias", "pad", "unfold",
            "eye", "ones_like", "empty_like", "feature_dropout", "dropout_", "alpha_dropout", "feature_alpha_dropout"]


def _numel(value) -> int:
    try:
        sizes = value.type().sizes()
    except (RuntimeError, AttributeError):
        return 0  # a scalar or list (shape arithmetic in the trace): no tensor work
    return math.prod(sizes) if sizes is not None else 0


def _per_output(name):
    return lambda inputs, outputs: Counter({TAG + name: _numel(outputs[0])})


def _per_input(name):
    # max(in, out) also covers the binary element-wise form of aten::max / aten::min.
    return lambda inputs, outputs: Counter({TAG + name: max(_numel(inputs[0]), _numel(outputs[0]))})


def _per_window(name):
    def handle(inputs, outputs):
        try:
            kernel = inputs[1].toIValue()
            window = math.prod(kernel) if isinstance(kernel, (list, tuple)) else int(kernel) ** 2
        except Exception:
            return Counter({TAG + name: _numel(inputs[0])})
        return Counter({TAG + name: _numel(outputs[0]) * window})

    return handle


def extra_handles() -> Dict[str, Any]:
    handles = {f"aten::{op}": _per_output(op) for op in ELEMENTWISE_OPS}
    handles.update({f"aten::{op}": _per_input(op) for op in REDUCTION_OPS})
    handles.update({f"aten::{op}": _per_window(op) for op in WINDOW_OPS})
    handles.update({f"aten::{op}": None for op in FREE_OPS})  # None = ignored by fvcore
    return handles


@dataclass(frozen=True)
class FlopCount:
    total: int  # fvcore + elementwise
    fvcore: int  # what fvcore's FlopCountAnalysis counts by itself
    elementwise: int  # what the added handlers count
    attention: int  # part of total inside attached attention modules
    unhandled: Dict[str, int] = field(default_factory=dict)  # operator -> occurrences, never dropped
    by_operator: Dict[str, int] = field(default_factory=dict)


def count_flops(model: nn.Module, inputs) -> FlopCount:
    """Trace ``model`` on ``inputs`` (eval mode) and count FLOPs by the convention above."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle(**extra_handles())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            with torch.no_grad():
                by_op = dict(analysis.by_operator())
                by_module = analysis.by_module()
                unhandled = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    elementwise = sum(v for k, v in by_op.items() if k.startswith(TAG))
    fv = sum(v for k, v in by_op.items() if not k.startswith(TAG))
    sites = [n for n, m in model.named_modules() if isinstance(m, AttentionSlot)]
    attention = sum(by_module.get(s, 0) for s in sites)
    return FlopCount(
        total=int(fv + elementwise), fvcore=int(fv), elementwise=int(elementwise), attention=int(attention),
        unhandled={k: int(v) for k, v in unhandled.items()},
        by_operator={k.replace(TAG, ""): int(v) for k, v in sorted(by_op.items())},
    )


def measure_flops(model: nn.Module, inputs) -> Measurement:
    fc = count_flops(model, inputs)
    return Measurement(
        metric="flops",
        value=fc.total,
        unit="FLOPs (multiply-adds)",
        method="fvcore FlopCountAnalysis + element-wise/reduction handlers (1 per output/input element)",
        settings={"input_shape": list(inputs.shape)},
        stats={
            "fvcore": fc.fvcore, "elementwise": fc.elementwise, "attention": fc.attention,
            "unhandled": fc.unhandled, "by_operator": fc.by_operator,
        },
    )
