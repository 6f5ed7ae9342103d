"""Counts in a peer tool's convention, so a paper's printed "FLOPs" can be reproduced in its own terms.

attnbench's own count (``flops.py``) is one rule table applied to every operator. Papers print what their
counting tool said, and the tools disagree by design: thop's module hooks count a BatchNorm as 4 ops per
element in July 2019 and 2 in May 2020, never see ``x.mean`` or ``torch.sigmoid`` (functions, not
modules), count a ReLU module in 2019 and not in 2020; ptflops' 2019 hooks count a pool as its input's
elements and skip Conv1d; the SE, CBAM and SKNet papers count conv/FC multiply-adds only.

A convention here is one tool at one version, modelled on the tool's own machinery, each part read from
its source (cited per tool below), so that it prints what the tool prints on any model:
- its **rule table** and how a layer finds its rule: thop <= 0.1.1 and ptflops 0.7 look up the layer's
  *exact* type, ptflops 0.1 tests ``isinstance`` in its own order, ultralytics-thop walks the type's MRO;
- **which layers it hooks** (thop 0.0.23: leaves only) and how a layer's calls combine (0.0.23 keeps the last);
- **how it sums** layers into a total: every leaf (thop 0.0.23), a descent from the root that stops at a
  layer with a rule (thop 0.0.31/0.1.1, ptflops 0.7), every layer with a rule (ptflops 0.1, ultralytics-thop);
- its **arithmetic** (thop 0.0.23 sums in float32) and **which parameters** it counts;
- what it counts **outside module hooks**: ptflops 0.7 patches ``torch.nn.functional`` and tensor methods
  for the duration of the count (so an ``nn.ReLU`` module is counted by its hook *and* by the ``F.relu`` it
  calls), ultralytics-thop counts matrix products in a ``TorchFunctionMode`` outside any module that has a
  rule; ptflops 0.7's aten backend counts convolutions and matrix products at the dispatcher. Each is done
  here the way the tool does it.

So timm's ``BatchNormAct2d`` (a ``BatchNorm2d`` subclass whose activation and drop are children) is skipped
by every thop <= 0.1.1 (no exact-type rule; for 0.0.23 also not a leaf) while its activation child is
counted, and counted as a BatchNorm by ptflops 0.1 (``isinstance``) and ultralytics-thop (MRO): derived
from each tool's rules, never a constant per family. A layer for which a tool has a rule that is not
replicated here (its RNN, nn.MultiheadAttention and timm-Attention rules, ultralytics-thop's einsum) makes
the count refuse with one line (``Unsupported``) instead of printing a number the tool would not.
The project's audit (``benchmarks/peer_audit.py``) runs the real tools beside these on the models
attnbench measures; the tools are never dependencies.

What a tool would report for the same model written differently from the measured one (a shared
``nn.ReLU`` that thop 0.0.23 counts once, a pool written as ``x.mean``, a fused norm written as two
modules) is not hidden in a convention: ``validate`` computes it as a named cause.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import Unsupported
from ..records.measurement import Measurement

Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[str, float]]


@dataclass(frozen=True)
class ConventionCount:
    """A model's operations and parameters as one peer tool at one version counts them."""

    convention: str
    ops: int  # the tool's total (its "FLOPs"; MACs for most)
    params: int  # the tool's parameter count
    by_kind: Dict[str, int] = field(default_factory=dict)  # ops per layer kind (conv, bn, relu, pool, linear, ...)
    by_module: Dict[str, int] = field(default_factory=dict)  # ops per module path (hook conventions)

    def ops_in(self, predicate: Callable[[str], bool]) -> int:
        """Ops of the modules whose path satisfies ``predicate`` (e.g. a backbone's head pool)."""
        return sum(n for path, n in self.by_module.items() if predicate(path))


def _zero(m, x, y):
    """A rule that counts nothing but is a rule (thop's ``zero_ops``): the layer is hooked, its parameters
    counted where the tool counts those of hooked layers, and the tool does not descend into it."""
    return "zero", 0


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _bias(m) -> int:
    return 1 if getattr(m, "bias", None) is not None else 0


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_UPSAMPLE = (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
_RNN = (nn.RNNCell, nn.GRUCell, nn.LSTMCell, nn.RNN, nn.GRU, nn.LSTM)


def _table(*entries) -> Dict[type, Rule]:
    """{class: rule} from (class or tuple of classes, rule) pairs, in the tool's order."""
    table: Dict[type, Rule] = {}
    for classes, rule in entries:
        for cls in classes if isinstance(classes, tuple) else (classes,):
            table[cls] = rule
    return table


class _NotReplicated:
    """A rule of the tool's that attnbench does not replicate: counting a model that has such a layer refuses."""

    def __init__(self, what: str):
        self.what = what

    def __call__(self, m, x, y):  # pragma: no cover - never run: the model is refused before its forward
        raise Unsupported(self.what)


# --- thop 0.0.23.post1907171430 (PyPI, July 2019; github.com/Lyken17/pytorch-OpCounter thop/profile.py and
# thop/count_hooks.py). Only leaf modules are hooked; a hook *assigns* the module's ops (a module called twice
# keeps its last call) as a float32 tensor; the total and the parameters (every parameter of every leaf,
# rule or not) are summed over the leaves in float32.


def _t23_conv(m, x, y):
    return "conv", m.in_channels * y.nelement() * (m.weight.size()[2:].numel() + _bias(m)) // m.groups


def _t23_convt(m, x, y):
    kh, kw = m.kernel_size
    return "conv", y.nelement() * (kh * kw * m.in_channels // m.groups + _bias(m))


def _t23_bn(m, x, y):
    return "bn", 4 * x.numel()  # subtract, divide, gamma, beta


def _t23_relu(m, x, y):
    return "relu", x.numel()


def _t23_avgpool(m, x, y):
    kernel_ops = torch.prod(torch.Tensor([m.kernel_size])) + 1  # an int kernel_size counts once, not squared
    return "pool", int(kernel_ops * y.numel())


def _t23_adaptive_avgpool(m, x, y):
    kernel = torch.Tensor([*(x.shape[2:])]) // torch.Tensor(list((m.output_size,))).squeeze()
    return "pool", int((torch.prod(kernel) + 1) * y.numel())


def _t23_linear(m, x, y):
    return "linear", (2 * m.in_features - 1) * y.numel()


THOP_0_0_23 = _table(
    (_CONV, _t23_conv),
    (nn.ConvTranspose2d, _t23_convt),
    (_BN, _t23_bn),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU), _t23_relu),
    (_AVG, _t23_avgpool),
    (_ADAPTIVE_AVG, _t23_adaptive_avgpool),
    (nn.Linear, _t23_linear),
)


# --- thop 0.0.31.post2005241907 (PyPI, May 2020; thop/profile.py ``profile``, thop/vision/basic_hooks.py). Every
# module whose exact type has a rule is hooked; ops accumulate per call (float64); the total descends from the
# root's children and stops at a hooked module that is not an nn.Sequential/ModuleList, taking its ops and the
# parameters it holds (set by its hook, so a hooked module that never ran counts 0).


def _t31_conv(m, x, y):
    return "conv", y.nelement() * (m.in_channels // m.groups * m.weight.size()[2:].numel() + _bias(m))


def _t31_bn(m, x, y):
    return "bn", 2 * x.numel()  # eval mode


def _t31_leaky(m, x, y):
    return "relu", x.numel()


def _t31_avgpool(m, x, y):
    return "pool", y.numel()


def _t31_adaptive_avgpool(m, x, y):
    kernel = torch.DoubleTensor([*(x.shape[2:])]) // torch.DoubleTensor(list((m.output_size,))).squeeze()
    return "pool", int((torch.prod(kernel) + 1) * y.numel())


def _t31_linear(m, x, y):
    return "linear", m.in_features * y.numel()


def _t31_upsample(m, x, y):
    per = {"nearest": 0, "linear": 5, "bilinear": 11, "bicubic": 224 + 35}.get(m.mode, 0)  # trilinear: a warning, 0
    return "upsample", y.nelement() * per


_THOP_RNN = _NotReplicated("its RNN rules")
THOP_0_0_31 = _table(
    (nn.ZeroPad2d, _zero),
    (_CONV + _CONVT, _t31_conv),
    ((*_BN, nn.SyncBatchNorm), _t31_bn),
    ((nn.ReLU, nn.ReLU6), _zero),
    (nn.LeakyReLU, _t31_leaky),
    (_MAX + _ADAPTIVE_MAX, _zero),
    (_AVG, _t31_avgpool),
    (_ADAPTIVE_AVG, _t31_adaptive_avgpool),
    (nn.Linear, _t31_linear),
    (nn.Dropout, _zero),
    (_UPSAMPLE, _t31_upsample),
    (_RNN, _THOP_RNN),
)


# --- thop 0.1.1.post2209072238 (PyPI's newest thop, Sept 2022; thop/profile.py, thop/vision/basic_hooks.py and
# calc_func.py). As 0.0.31, and the descent adds the root's own ops; the rules changed.


def _t11_conv(m, x, y):
    return "conv", _prod(y.shape) * (x.shape[1] // m.groups) * _prod(m.weight.shape[2:])  # no bias


def _t11_norm(m, x, y):
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return "bn", 2 * x.numel() * (2 if affine else 1)


def _t11_prelu(m, x, y):
    return "relu", x.numel()  # eval mode


def _t11_softmax(m, x, y):
    n = x.size()[m.dim]
    return "softmax", x.numel() // n * (3 * n - 1)


def _t11_relu(m, x, y):
    return "relu", 0  # calculate_relu_flops: "x[x < 0] = 0" is free


def _t11_adaptive_avgpool(m, x, y):
    kernel = torch.div(torch.DoubleTensor([*(x.shape[2:])]), torch.DoubleTensor([*(y.shape[2:])]))
    return "pool", int((torch.prod(kernel) + 1) * y.numel())


def _t11_upsample(m, x, y):
    if m.mode not in ("nearest", "linear", "bilinear", "bicubic"):  # trilinear: a warning, 0
        return "upsample", 0
    per = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 224 + 35}[m.mode]  # nearest: 1 per output
    return "upsample", y.nelement() * per


THOP_0_1_1 = _table(
    (nn.ZeroPad2d, _zero),
    (_CONV + _CONVT, _t11_conv),
    ((*_BN, nn.LayerNorm, *_IN, nn.SyncBatchNorm), _t11_norm),
    (nn.PReLU, _t11_prelu),
    (nn.Softmax, _t11_softmax),
    ((nn.ReLU, nn.ReLU6), _zero),
    (nn.LeakyReLU, _t11_relu),
    (_MAX + _ADAPTIVE_MAX, _zero),
    (_AVG, _t31_avgpool),
    (_ADAPTIVE_AVG, _t11_adaptive_avgpool),
    (nn.Linear, _t31_linear),
    (nn.Dropout, _zero),
    (_UPSAMPLE, _t11_upsample),
    (_RNN, _THOP_RNN),
    ((nn.Sequential, nn.PixelShuffle), _zero),
)


# --- ptflops as of 2019 (github.com/sovrasov/flops-counter.pytorch flops_counter.py at 3c9d58c = PyPI's ptflops
# 0.1, the copy github.com/implus/PytorchInsight ships as classification/flops_counter.py). A module is counted
# when it is an *instance* of one of its classes (tested in this order); every such module's ops are summed
# (one nested in another too), accumulated per call and divided by the batch; parameters: every trainable one.


def _p01_conv(m, x, y):
    kh, kw = m.kernel_size
    positions = x.shape[0] * y.shape[2] * y.shape[3]
    bias = m.out_channels * positions if m.bias is not None else 0
    return "conv", kh * kw * m.in_channels * (m.out_channels // m.groups) * positions + bias


def _p01_relu(m, x, y):
    return "relu", y.numel()


def _p01_linear(m, x, y):
    return "linear", x.shape[0] * x.shape[1] * y.shape[1]  # the second axis, whatever the input's rank


def _p01_pool(m, x, y):
    return "pool", _prod(x.shape)


def _p01_bn(m, x, y):
    return "bn", _prod(x.shape) * (2 if m.affine else 1)


def _p01_upsample(m, x, y):
    return "upsample", y[0].numel()  # output[0]: the first image only


PTFLOPS_0_1 = _table(
    (nn.Conv2d, _p01_conv),
    ((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6), _p01_relu),
    (nn.Linear, _p01_linear),
    ((nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d), _p01_pool),
    (nn.BatchNorm2d, _p01_bn),
    (nn.Upsample, _p01_upsample),
)


# --- ptflops 0.7.5 (PyPI, 2025; ptflops/pytorch_engine.py, pytorch_ops.py), its default pytorch backend. A module
# is counted when its exact type has a rule; the total descends from the root and stops at such a module;
# divided by the batch. While it counts, ptflops replaces torch.nn.functional's activations, pools, softmax and
# interpolate and torch's/Tensor's matmul, mm, bmm, addmm, baddbmm, mul and add by counting wrappers (calls
# through those names only: ``x * y`` and ``x @ y`` are not counted) -- including the calls module forwards
# make, so an nn.ReLU is counted by its hook and by its F.relu. Parameters: every trainable one.


def _p07_conv(m, x, y, transpose: bool = False):
    spatial = x.shape[2:] if transpose else y.shape[2:]
    per_position = _prod(m.kernel_size) * (m.in_channels * (m.out_channels // m.groups))
    bias = x.shape[0] * _prod(y.shape[1:]) if m.bias is not None else 0
    return "conv", per_position * x.shape[0] * _prod(spatial) + bias


def _p07_convt(m, x, y):
    return _p07_conv(m, x, y, transpose=True)


def _p07_norm(m, x, y):
    return "bn", _prod(x.shape) * (2 if getattr(m, "affine", False) else 1)  # LayerNorm has no ``affine``: 1


def _p07_linear(m, x, y):
    bias = y.shape[-1] if m.bias is not None else 0
    return "linear", (x.shape[-1] * y.shape[-1] + bias) * _prod(x.shape[:-1])


_P07_OTHER = _NotReplicated("its RNN, nn.MultiheadAttention and timm Attention rules")
PTFLOPS_0_7 = _table(
    (_CONV, _p07_conv),
    ((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU), _p01_relu),
    ((*_MAX, *_AVG, *_ADAPTIVE_MAX, *_ADAPTIVE_AVG), _p01_pool),
    ((*_BN, *_IN, nn.GroupNorm, nn.LayerNorm), _p07_norm),
    (nn.Linear, _p07_linear),
    (nn.Upsample, _p01_upsample),
    (_CONVT, _p07_convt),
    ((*_RNN, nn.MultiheadAttention), _P07_OTHER),
)
try:  # as ptflops registers it when timm is importable
    from timm.models.vision_transformer import Attention as _TimmAttention

    PTFLOPS_0_7[_TimmAttention] = _P07_OTHER
except ImportError:  # pragma: no cover
    pass


def _p07_numel(input, *args, **kwargs):
    return input.numel()


def _p07_interpolate(*args, **kwargs):
    input = kwargs.get("input", None)
    if input is None and len(args) > 0:
        input = args[0]
    size = kwargs.get("size", None)
    if size is None and len(args) > 1:
        size = args[1]
    if size is not None:
        if isinstance(size, (tuple, list)):
            return int(np.prod(size, dtype=np.int64)) * np.prod(input.shape[:2], dtype=np.int64)
        return int(size) ** (input.dim() - 2) * np.prod(input.shape[:2], dtype=np.int64)
    scale_factor = kwargs.get("scale_factor", None)
    if scale_factor is None and len(args) > 2:
        scale_factor = args[2]
    flops = input.numel()
    if isinstance(scale_factor, tuple) and len(scale_factor) == len(input.shape) - 2:
        flops *= int(np.prod(scale_factor, dtype=np.int64))
    else:
        flops *= scale_factor ** (input.dim() - 2)
    return flops


def _p07_matmul(input, other, *args, **kwargs):
    return np.prod(input.shape, dtype=np.int64) * other.shape[-1]


def _p07_addmm(input, mat1, mat2, *, beta=1, alpha=1, out=None):
    flops = np.prod(mat1.shape, dtype=np.int64) * mat2.shape[-1]
    return flops + (np.prod(input.shape, dtype=np.int64) if beta != 0 else 0)


def _p07_elementwise(input, other, *args, **kwargs):
    """The larger size per axis, axes aligned from the *left* (as ptflops does), not broadcasting's right."""
    if not torch.is_tensor(input):
        return np.prod(other.shape, dtype=np.int64) if torch.is_tensor(other) else 1
    if not torch.is_tensor(other):
        return np.prod(input.shape, dtype=np.int64)
    n = max(input.dim(), other.dim())
    return np.prod(
        [max(input.shape[i] if i < input.dim() else 1, other.shape[i] if i < other.dim() else 1) for i in range(n)],
        dtype=np.int64,
    )


_P07_FUNCTIONAL = {
    name: _p07_numel
    for name in (
        "relu",
        "prelu",
        "elu",
        "relu6",
        "gelu",
        "silu",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "softmax",
    )
}
_P07_FUNCTIONAL.update(upsample=_p07_interpolate, interpolate=_p07_interpolate)
_P07_TORCH = {
    "matmul": _p07_matmul,
    "mm": _p07_matmul,
    "bmm": _p07_matmul,
    "addmm": _p07_addmm,
    "baddbmm": _p07_addmm,
    "mul": _p07_elementwise,
    "add": _p07_elementwise,
}
_P07_TENSOR = {
    "matmul": _p07_matmul,
    "mm": _p07_matmul,
    "bmm": _p07_matmul,
    "addmm": _p07_addmm,
    "mul": _p07_elementwise,
    "add": _p07_elementwise,
}
_PATCHING = threading.Lock()  # the patches are process-wide: one patched count at a time


@contextmanager
def _ptflops_patches(on_call: Callable[[str, float], None]) -> Iterator[None]:
    """ptflops 0.7's patch_functional + patch_tensor_ops: the same names replaced by counting wrappers (the
    handler runs on the arguments, then the original), restored afterwards."""

    def wrap(owner, name, handler, method: bool):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            on_call(name, handler(*args, **kwargs))
            return original(*args, **kwargs)

        return owner, name, original, wrapper

    patches = [wrap(F, n, h, False) for n, h in _P07_FUNCTIONAL.items()]
    patches += [wrap(torch, n, h, False) for n, h in _P07_TORCH.items()]
    patches += [wrap(torch.Tensor, n, h, True) for n, h in _P07_TENSOR.items()]
    with _PATCHING:
        try:
            for owner, name, _, wrapper in patches:
                setattr(owner, name, wrapper)
            yield
        finally:
            for owner, name, original, _ in patches:
                setattr(owner, name, original)


# --- ultralytics-thop 2.2.3 (PyPI, the thop most installs pull in today; thop/profile.py ``profile``,
# thop/vision/basic_hooks.py, calc_func.py). A module's rule is the first class of its MRO in the table (so a
# subclass -- timm's BatchNormAct2d, LayerNorm2d -- gets its base's rule); every module with a rule is summed,
# ops accumulate per call; matrix products called outside any module with a non-zero rule are counted in a
# TorchFunctionMode; parameters: every one.


def _ul_conv(m, x, y, transpose: bool = False):
    volume, channels = (x.shape, y.shape) if transpose else (y.shape, x.shape)
    k = list(m.weight.shape)
    return "conv", _prod(volume) * (channels[-(len(k) - 1)] // m.groups) * _prod(k[2:])


def _ul_convt(m, x, y):
    return _ul_conv(m, x, y, transpose=True)


def _ul_softmax(m, x, y):
    dim = -3 if isinstance(m, nn.Softmax2d) else m.dim
    if dim is None:
        dim = 0 if x.dim() in {0, 1, 3} else 1
    n = x.size()[dim] if x.dim() else 1
    batch = x.numel() // n if n else 0
    ops = batch * (n + max(n - 1, 0) + n)
    if isinstance(m, nn.Softmin):
        ops += x.numel()
    elif isinstance(m, nn.LogSoftmax):
        ops += batch
    return "softmax", ops


def _ul_avgpool(m, x, y):
    kernel = m.kernel_size
    if isinstance(kernel, int):
        kernel = (kernel,) * (3 if isinstance(m, nn.AvgPool3d) else 2)
    dims = len(kernel)
    stride = (m.stride,) * dims if isinstance(m.stride, int) else m.stride
    padding = (m.padding,) * dims if isinstance(m.padding, int) else m.padding
    windows = 1
    for size, output, k, s, p in zip(x.shape[-dims:], y.shape[-dims:], kernel, stride, padding):
        lower, upper = (-p, size + p) if m.count_include_pad else (0, size)
        windows *= sum(max(min(i * s - p + k, upper) - max(i * s - p, lower), 0) for i in range(output))
    return "pool", _prod(x.shape[:-dims]) * windows + y.numel()  # one add per input, one divide per output


def _ul_adaptive_avgpool(m, x, y):
    sizes = (
        o if i == o else sum(-(-(j + 1) * i // o) - j * i // o for j in range(o)) for i, o in zip(x.shape, y.shape)
    )
    return "pool", _prod(sizes) + y.numel()


def _ul_upsample(m, x, y):
    per = {"nearest": 0, "nearest-exact": 0, "linear": 5, "bilinear": 11, "bicubic": 259, "trilinear": 31}.get(
        m.mode, 0
    )
    return "upsample", per * y.nelement()


def _ul_bilinear(m, x, y):
    return "linear", (m.in1_features + 1) * m.in2_features * y.numel()


def _ul_embedding(m, x, y):
    return (
        "zero",
        0,
    )  # count_embedding: a gather counts nothing (but it is a rule: functional products inside it are not counted)


_M = nn.modules
ULTRALYTICS_THOP = _table(
    (
        (_M.padding._ConstantPadNd, _M.padding._ReflectionPadNd, _M.padding._ReplicationPadNd, _M.dropout._DropoutNd),
        _zero,
    ),
    (_CONV, _ul_conv),
    (_CONVT, _ul_convt),
    ((_M.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm), _t11_norm),
    (nn.PReLU, _t11_prelu),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d), _ul_softmax),
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            *_MAX,
            *_ADAPTIVE_MAX,
            nn.FractionalMaxPool2d,
            nn.FractionalMaxPool3d,
            _M.pooling._MaxUnpoolNd,
        ),
        _zero,
    ),
    (_AVG, _ul_avgpool),
    (_ADAPTIVE_AVG, _ul_adaptive_avgpool),
    (nn.Linear, _t31_linear),
    (nn.Bilinear, _ul_bilinear),
    (_UPSAMPLE, _ul_upsample),
    (_RNN, _NotReplicated("its RNN rules")),
    (
        (
            nn.Sequential,
            nn.ModuleList,
            nn.ModuleDict,
            nn.ParameterList,
            nn.ParameterDict,
            nn.Identity,
            nn.Flatten,
            nn.Unflatten,
            nn.Unfold,
            nn.PixelShuffle,
            nn.PixelUnshuffle,
            nn.ChannelShuffle,
        ),
        _zero,
    ),
    (nn.Embedding, _ul_embedding),
    (nn.MultiheadAttention, _NotReplicated("its nn.MultiheadAttention rule")),
)
if hasattr(nn, "RMSNorm"):
    ULTRALYTICS_THOP[nn.RMSNorm] = _t11_norm
if hasattr(_M.padding, "_CircularPadNd"):
    ULTRALYTICS_THOP[_M.padding._CircularPadNd] = _zero


def _ul_matmul(args, kwargs, y):
    return y.numel() * (args[0] if args else kwargs["input"]).shape[-1]


def _ul_sdpa(args, kwargs, y):
    q, k, v = (*args, *(kwargs[n] for n in ("query", "key", "value")[len(args) :]))[:3]
    return y.numel() // v.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_UL_FUNCTIONS = {
    torch.matmul: _ul_matmul,
    torch.Tensor.matmul: _ul_matmul,
    torch.Tensor.__matmul__: _ul_matmul,
    torch.bmm: _ul_matmul,
    torch.Tensor.bmm: _ul_matmul,
    F.linear: _ul_matmul,
    F.scaled_dot_product_attention: _ul_sdpa,
}
_UL_REFUSED = {torch.einsum: "its einsum rule", F.multi_head_attention_forward: "its multi-head attention rule"}


class _UltralyticsFunctions(torch.overrides.TorchFunctionMode):
    """ultralytics-thop's _FunctionCounter: a product counts while no module with a non-zero rule is running."""

    def __init__(self, depth: List[int], on_call: Callable[[str, int], None], tool: str):
        super().__init__()
        self.depth, self.on_call, self.tool = depth, on_call, tool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        y = func(*args, **kwargs)
        if not self.depth[0]:
            if func in _UL_REFUSED:
                raise Unsupported(
                    f"{self.tool} counts this model's {getattr(func, '__name__', func)} with "
                    f"{_UL_REFUSED[func]}, which attnbench does not replicate; run the tool itself"
                )
            rule = _UL_FUNCTIONS.get(func)
            if rule is not None:
                self.on_call(getattr(func, "__name__", "product"), rule(args, kwargs, y))
        return y


# --- functional global pools counted as the pooling modules official code uses (validate's named cause) --------

_SPATIAL = ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})
_POOL_FUNCTIONS = {"mean": nn.AdaptiveAvgPool2d(1), "amax": nn.AdaptiveMaxPool2d(1)}


def _global_pool(func, args, kwargs):
    """The pooling module a functional global pool stands for (``x.mean((2, 3))``, ``x.amax((2, 3))`` on
    an (N, C, H, W) tensor), with its input; else None."""
    name = getattr(func, "__name__", "")
    if name not in _POOL_FUNCTIONS or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 4:
        return None
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    dims = {dims} if isinstance(dims, int) else set(dims or ())
    return (_POOL_FUNCTIONS[name], args[0]) if dims in _SPATIAL else None


class _FunctionalPools(torch.overrides.TorchFunctionMode):
    """Sees ``x.mean((2, 3))``-style global pools, which no module hook sees, for ``pools_as_modules``."""

    def __init__(self, on_pool):
        super().__init__()
        self.on_pool = on_pool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        found = _global_pool(func, args, kwargs)
        if found is not None and isinstance(out, torch.Tensor):
            module, x = found
            self.on_pool(module, x, out.reshape(x.shape[0], x.shape[1], 1, 1))
        return out


@dataclass(frozen=True)
class HookConvention:
    """A module-hook tool: its rule table and how it matches, hooks, combines, sums and counts parameters.

    ``total``: "leaves" (every module without children, rule or not: thop 0.0.23), "descent" (from the root's
    children, stopping at a module with a rule that is not an nn.Sequential/ModuleList: thop 0.0.31),
    "descent+root" (the same plus the root's own ops: thop 0.1.1), "stop" (from the root, stopping at any module
    with a rule: ptflops 0.7), "every" (every module with a rule, nested ones too: ptflops 0.1, ultralytics-thop).
    ``params``: "leaves" (every leaf's, in float32: thop 0.0.23), "descent" (the modules the descent stopped at,
    if they ran: thop 0.0.31/0.1.1), "trainable" (ptflops), "all" (ultralytics-thop)."""

    name: str
    tool: str  # the tool and version, in words
    table: Dict[type, Rule]
    match: str = "exact"  # "exact" type, "isinstance" in the table's order, or the first class of the "mro"
    leaves_only: bool = False  # thop 0.0.23 hooks modules without children only
    last_call_only: bool = False  # thop 0.0.23 assigns a module's ops per call: a reused module keeps its last
    float32: bool = False  # thop 0.0.23 sums ops and parameters in float32 tensors
    total: str = "descent"
    params: str = "trainable"
    functional: str = ""  # "ptflops-0.7" (patched functions) or "ultralytics" (a TorchFunctionMode)

    def rule_for(self, module: nn.Module) -> Optional[Rule]:
        if self.leaves_only and next(module.children(), None) is not None:
            return None
        if self.match == "exact":
            return self.table.get(type(module))
        if self.match == "mro":
            return next((self.table[c] for c in type(module).__mro__ if c in self.table), None)
        return next((rule for cls, rule in self.table.items() if isinstance(module, cls)), None)

    def count(self, model: nn.Module, x: torch.Tensor, pools_as_modules: bool = False) -> ConventionCount:
        """Per-image ops and parameters; ``pools_as_modules`` also counts functional global pools
        (``x.mean((2, 3))``, ``x.amax((2, 3))``) as the tool counts ``nn.AdaptiveAvg/MaxPool2d(1)`` -- what
        it reports for the same model written with pooling modules."""
        if pools_as_modules and self.functional:
            raise ValueError(
                f"pools_as_modules applies to module-hook conventions without functional counting, not {self.name!r}"
            )
        modules = list(model.modules())
        names = {id(m): n for n, m in model.named_modules()}
        rules = {id(m): r for m in modules for r in (self.rule_for(m),) if r is not None}
        for m in modules:
            rule = rules.get(id(m))
            if isinstance(rule, _NotReplicated):
                raise Unsupported(
                    f"{self.tool} counts {names[id(m)] or 'the model'} ({type(m).__name__}) with "
                    f"{rule.what}, which attnbench does not replicate; run the tool itself"
                )
        calls: Dict[int, List[Tuple[str, float]]] = {}
        ran = set()
        extra: Dict[int, List[Tuple[str, str, float]]] = {}  # caller -> (path, kind, ops): pools, functional calls
        stack: List[nn.Module] = [model]
        depth = [0]  # modules with a non-zero rule running (ultralytics-thop counts functions outside them only)

        def enter(module, args):
            stack.append(module)
            if rules.get(id(module)) not in (None, _zero):
                depth[0] += 1

        def hook(module, args, out):
            stack.pop()
            rule = rules.get(id(module))
            if rule is None:
                return
            if rule is not _zero:
                depth[0] -= 1
            ran.add(id(module))
            inp = args[0] if args else None
            if isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor):
                try:
                    calls.setdefault(id(module), []).append(rule(module, inp, out))
                except Exception as exc:  # the tool's own rule fails on this layer (thop 0.1.1 on Softmax(dim=None))
                    raise Unsupported(
                        f"{self.tool} fails on {names.get(id(module)) or 'the model'} "
                        f"({type(module).__name__}): {type(exc).__name__}: {exc}"
                    ) from exc

        def on_extra(label: str, kind: str, ops: float):
            caller = stack[-1]
            extra.setdefault(id(caller), []).append((f"{names.get(id(caller), '')}.<{label}>".lstrip("."), kind, ops))

        def on_pool(module, inp, out):
            rule = self.rule_for(module)
            if rule is not None:
                kind, n = rule(module, inp, out)
                on_extra("mean" if isinstance(module, nn.AdaptiveAvgPool2d) else "amax", kind, n)

        handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(hook))]
        was_training = model.training
        try:
            with (
                torch.no_grad(),
                self._functions(depth, on_extra),
                _FunctionalPools(on_pool) if pools_as_modules else _nothing(),
            ):
                model.eval()(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return self._sum(model, modules, names, rules, calls, ran, extra, x.shape[0])

    @contextmanager
    def _functions(self, depth, on_extra):
        if self.functional == "ptflops-0.7":
            with _ptflops_patches(lambda name, ops: on_extra(name, "functional", ops)):
                yield
        elif self.functional == "ultralytics":
            with _UltralyticsFunctions(depth, lambda name, ops: on_extra(name, "functional", ops), self.tool):
                yield
        else:
            yield

    def _contributors(self, model: nn.Module, modules: List[nn.Module], rules) -> List[nn.Module]:
        """The modules whose ops make the tool's total, in its order (a shared module twice where it walks twice)."""
        if self.total == "leaves":
            return [m for m in modules if next(m.children(), None) is None]
        if self.total == "every":
            return [m for m in modules if id(m) in rules]
        found: List[nn.Module] = []

        def descend(module):
            for child in module.children():
                stop = id(child) in rules and (
                    self.total == "stop" or not isinstance(child, (nn.Sequential, nn.ModuleList))
                )
                found.append(child) if stop else descend(child)

        if self.total == "stop" and id(model) in rules:
            return [model]
        descend(model)
        return ([model] if self.total == "descent+root" and id(model) in rules else []) + found

    def _sum(self, model, modules, names, rules, calls, ran, extra, batch) -> ConventionCount:
        contributors = self._contributors(model, modules, rules)
        entries: List[Tuple[str, List[Tuple[str, float]]]] = []
        placed = set()
        for m in modules:  # functional pools and calls go where their caller is, in module order
            if id(m) in extra:
                entries += [(path, [(kind, ops)]) for path, kind, ops in extra[id(m)]]
                placed.add(id(m))
            if self.total in ("leaves", "every"):
                entries += [(names[id(c)], self._kept(calls.get(id(c), []))) for c in contributors if c is m]
        if self.total not in ("leaves", "every"):
            entries += [(names[id(c)], self._kept(calls.get(id(c), []))) for c in contributors]
        entries += [
            (path, [(kind, ops)]) for key, items in extra.items() if key not in placed for path, kind, ops in items
        ]
        by_kind: Dict[str, int] = {}
        by_module: Dict[str, int] = {}
        total = torch.zeros(1, dtype=torch.float32) if self.float32 else 0
        for path, found in entries:
            ops = sum(n for _, n in found)
            for kind, n in found:
                by_kind[kind] = by_kind.get(kind, 0) + int(n) // batch
            if ops:
                by_module[path] = by_module.get(path, 0) + int(ops) // batch
            total = total + (torch.tensor([float(int(ops))], dtype=torch.float32) if self.float32 else ops)
        ops = int(total.item()) if self.float32 else int(total)
        return ConventionCount(
            self.name, ops // batch, self._params(model, modules, contributors, ran), by_kind, by_module
        )

    def _kept(self, found: List[Tuple[str, float]]) -> List[Tuple[str, float]]:
        return found[-1:] if self.last_call_only else found

    def _params(self, model, modules, contributors, ran) -> int:
        if self.params == "all":
            return sum(p.numel() for p in model.parameters())
        if self.params == "trainable":
            return sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.params == "descent":  # the parameters a stopping module holds, set by its hook when it ran
            return sum(sum(p.numel() for p in c.parameters()) for c in contributors if c is not model and id(c) in ran)
        # "leaves": every leaf's own parameters, summed per leaf and then over leaves in float32 tensors
        total = torch.zeros(1, dtype=torch.float32)
        for module in modules:
            if next(module.children(), None) is not None:
                continue
            own = torch.zeros(1, dtype=torch.float32)
            for p in module.parameters():
                own += torch.tensor([float(p.numel())], dtype=torch.float32)
            total += own
        return int(total.item())


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- ptflops 0.7.5's aten backend (ptflops/aten_engine.py, aten_ops.py): a TorchDispatchMode around one forward
# (eval mode, gradients on) counts aten.convolution (with its bias), mm, matmul, addmm (with its bias) and bmm;
# nothing else. Parameters: every trainable one.


def _aten_matmul(inputs, outputs) -> int:
    shapes = [v.shape for v in inputs]
    assert len(shapes) == 2, shapes
    return _prod(shapes[0]) * shapes[-1][-1]


def _aten_addmm(inputs, outputs) -> int:
    (batch, width), out = inputs[1].shape, inputs[2].shape[1]
    return batch * width * out + (batch * out if inputs[0] is not None else 0)


def _aten_bmm(inputs, outputs) -> int:
    n, c, t = inputs[0].shape
    return n * c * t * inputs[-1].shape[-1]


def _aten_conv(inputs, outputs) -> int:
    (x, w, b, stride, pad, dilation, transposed, _, groups) = inputs  # aten._convolution's 13 arguments fail here too
    out = outputs[0].shape
    flop = x.shape[0] * _prod(w.shape) * _prod((x.shape if transposed else out)[2:])
    return flop + (x.shape[0] * out[1] * _prod(out[2:]) if b is not None else 0)


_ATEN_RULES = {
    torch.ops.aten.mm: _aten_matmul,
    torch.ops.aten.matmul: _aten_matmul,
    torch.ops.aten.addmm: _aten_addmm,
    torch.ops.aten.bmm: _aten_bmm,
    torch.ops.aten.convolution: _aten_conv,
    torch.ops.aten._convolution: _aten_conv,
}
_ATEN_KINDS = {"convolution": "conv", "_convolution": "conv", "addmm": "linear"}


def _ptflops_aten(model: nn.Module, x: torch.Tensor) -> ConventionCount:
    from torch.utils._python_dispatch import TorchDispatchMode

    by_kind: Dict[str, int] = {}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            rule = _ATEN_RULES.get(func._overloadpacket)
            if rule is not None:
                kind = _ATEN_KINDS.get(func._overloadpacket.__name__, "matmul")
                by_kind[kind] = by_kind.get(kind, 0) + rule(args, out if isinstance(out, tuple) else (out,))
            return out

    was_training = model.training
    try:
        with Counter():
            model.eval()(x)
    finally:
        model.train(was_training)
    batch = x.shape[0]
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ConventionCount(
        "ptflops-0.7-aten", sum(by_kind.values()) // batch, params, {k: v // batch for k, v in by_kind.items()}
    )


def _fvcore(model: nn.Module, x: torch.Tensor) -> ConventionCount:
    from .flops import count_flops

    fc = count_flops(model, x[:1])
    return ConventionCount("fvcore", fc.fvcore, sum(p.numel() for p in model.parameters()), {"fvcore": fc.fvcore})


CONV_FC_OPS = ("conv", "linear", "addmm")  # operator labels of the trace counter (fvcore names convolutions 'conv')


def _conv_fc(model: nn.Module, x: torch.Tensor) -> ConventionCount:
    from .flops import count_flops

    fc = count_flops(model, x[:1])
    by_kind = {k: v for k, v in fc.by_operator.items() if k in CONV_FC_OPS}
    return ConventionCount("conv-fc", sum(by_kind.values()), sum(p.numel() for p in model.parameters()), by_kind)


@dataclass(frozen=True)
class Convention:
    name: str
    tool: str
    count: Callable[..., ConventionCount]  # (model, x, pools_as_modules=False) where ``hooks``
    hooks: bool = False  # a module-hook tool that takes pools_as_modules (by_module filled)


def _hook(name: str, tool: str, table: Dict[type, Rule], **kw) -> Convention:
    convention = HookConvention(name, tool, table, **kw)
    return Convention(name, tool, convention.count, hooks=not convention.functional)


CONVENTIONS: Dict[str, Convention] = {
    c.name: c
    for c in (
        _hook(
            "thop-0.0.23",
            "thop 0.0.23.post1907171430 (July 2019): ECA-Net's figures",
            THOP_0_0_23,
            leaves_only=True,
            last_call_only=True,
            float32=True,
            total="leaves",
            params="leaves",
        ),
        _hook("thop-0.0.31", "thop 0.0.31.post2005241907 (May 2020): SimAM's figures", THOP_0_0_31, params="descent"),
        _hook(
            "thop-0.1.1",
            "thop 0.1.1.post2209072238 (Sept 2022, PyPI's newest thop)",
            THOP_0_1_1,
            total="descent+root",
            params="descent",
        ),
        _hook(
            "ultralytics-thop",
            "ultralytics-thop 2.2.3 (the thop that pip installs with ultralytics)",
            ULTRALYTICS_THOP,
            match="mro",
            total="every",
            params="all",
            functional="ultralytics",
        ),
        _hook(
            "ptflops-0.1",
            "ptflops 0.1 (2019; PytorchInsight's flops_counter.py): the SGE/SK authors' and Triplet "
            "Attention's figures",
            PTFLOPS_0_1,
            match="isinstance",
            total="every",
        ),
        _hook(
            "ptflops-0.7",
            "ptflops 0.7.5, pytorch backend (its default)",
            PTFLOPS_0_7,
            total="stop",
            functional="ptflops-0.7",
        ),
        Convention(
            "ptflops-0.7-aten",
            "ptflops 0.7.5, aten backend (convolutions and matrix products at the dispatcher)",
            _ptflops_aten,
        ),
        Convention(
            "fvcore", "fvcore's FlopCountAnalysis, its own handles (conv, linear, matmul, BN, pools it knows)", _fvcore
        ),
        Convention(
            "conv-fc", "conv + fully connected multiply-adds only (the SENet, CBAM and SKNet papers' tables)", _conv_fc
        ),
    )
}
ALIASES = {
    "thop": "thop-0.1.1",
    "ptflops": "ptflops-0.7",
    "ptflops-0.7.5": "ptflops-0.7",
    "ptflops-0.7-pytorch": "ptflops-0.7",
    "ultralytics-thop-2.2.3": "ultralytics-thop",
    "conv/fc": "conv-fc",
    "convfc": "conv-fc",
}


def convention(name: str) -> Convention:
    """A convention by name or alias (``thop`` is PyPI's newest thop, 0.1.1; ``ptflops`` its newest ptflops, 0.7.5
    with the default pytorch backend); a one-line error listing the names otherwise."""
    key = ALIASES.get(name, name)
    if key not in CONVENTIONS:
        from ..errors import UnknownNameError

        raise UnknownNameError("convention", name, list(CONVENTIONS) + list(ALIASES), "see `attnbench measure --help`")
    return CONVENTIONS[key]


def count_as(model: nn.Module, x: torch.Tensor, name: str, pools_as_modules: bool = False) -> ConventionCount:
    """``model``'s count on ``x`` (per image) in convention ``name`` (see ``HookConvention.count`` for
    ``pools_as_modules``, which only pure module-hook conventions take). Raises ``Unsupported`` (one line)
    where the tool would count a layer by a rule attnbench does not replicate."""
    conv = convention(name)
    if pools_as_modules and not conv.hooks:
        raise ValueError(f"pools_as_modules applies to module-hook conventions, not {conv.name!r}")
    return conv.count(model, x, pools_as_modules=True) if pools_as_modules else conv.count(model, x)


def measure_as(model: nn.Module, x: torch.Tensor, name: str) -> Measurement:
    conv = convention(name)
    c = conv.count(model, x)
    return Measurement(
        f"macs_as_{conv.name}",
        c.ops,
        "ops",
        f"{conv.tool}, per image",
        {"input_shape": list(x.shape), "convention": conv.name},
        {"params": c.params, "by_kind": c.by_kind},
    )
