"""Counts in a peer tool's convention, so a paper's printed "FLOPs" can be reproduced in its own terms.

attnbench's own count (``flops.py``) is one rule table applied to every operator. Papers print what their
counting tool said, and the tools disagree by design: thop's module hooks count a BatchNorm as 4 ops per
element in July 2019 and 2 in May 2020, never see ``x.mean`` or ``torch.sigmoid`` (functions, not
modules), count a ReLU module in 2019 and not in 2020; ptflops' 2019 hooks count a pool as its input's
elements and skip Conv1d; the SE, CBAM and SKNet papers count conv/FC multiply-adds only. A convention
here is one such tool at one version, implemented from its source (cited per convention) and applied to
the layers of the model measured. Every hook-based convention is checked against the real tool on the
same models in the project's cross-check (README, "Counting conventions"); the tools are never
dependencies.

Rules are applied to what a layer *is* (``isinstance``), not to its exact class: timm's
``BatchNormAct2d`` counts as the BatchNorm it is (thop's exact-type table would skip it) and its
activation as the activation. What the tools' own quirks do to a model written differently from the
measured one (a shared ``nn.ReLU`` that thop 0.0.23 counts once, a pool written as ``x.mean``) is not
hidden in a convention: ``validate`` computes it as a named cause.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .record import Measurement

_BN = nn.modules.batchnorm._BatchNorm
_CONV = nn.modules.conv._ConvNd
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_RELU = (nn.ReLU, nn.ReLU6)

Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], Optional[Tuple[str, int]]]


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


# --- per-layer rules: (module, input, output) -> (kind, ops), or None (the tool has no rule: 0 ops) ---------

def _conv_macs(m, out, bias: bool) -> int:
    k = m.weight[0, 0].numel()
    return out.numel() * (m.in_channels // m.groups * k + (1 if bias and m.bias is not None else 0))


def _adaptive_kernel(m, x, out, exact: bool) -> float:
    """thop's window per output: input size // output size per dim (0.1.1 divides as floats)."""
    dims = out.dim() - 2
    k = 1.0
    for n, o in zip(x.shape[-dims:], out.shape[-dims:]):
        k *= (n / o) if exact else (n // o)
    return k


_THOP_UPSAMPLE = {"nearest": 0, "linear": 5, "bilinear": 11, "bicubic": 259, "trilinear": 31}  # ops per output


def _thop_upsample(m, out):
    return "upsample", _THOP_UPSAMPLE.get(m.mode, 0) * out.numel()


def thop_0_0_23(m, x, out):
    """thop 0.0.23.post1907171430 (PyPI, July 2019; github.com/Lyken17/pytorch-OpCounter thop/count_hooks.py):
    conv cin*out*(k + bias)/groups, BatchNorm 4/element, ReLU/ReLU6/LeakyReLU 1/element, avg pool
    (prod(kernel_size as given) + 1)/output, adaptive avg pool (window + 1)/output, Linear (2*in - 1)/output;
    max pools, dropout and everything else 0."""
    if isinstance(m, _CONV):
        k = m.weight[0, 0].numel()
        return "conv", m.in_channels * out.numel() * (k + (1 if m.bias is not None else 0)) // m.groups
    if isinstance(m, _BN):
        return "bn", 4 * x.numel()
    if isinstance(m, (*_RELU, nn.LeakyReLU)):
        return "relu", x.numel()
    if isinstance(m, _AVG):
        kernel = m.kernel_size if isinstance(m.kernel_size, (tuple, list)) else [m.kernel_size]
        return "pool", (int(torch.tensor(kernel).prod()) + 1) * out.numel()
    if isinstance(m, _ADAPTIVE_AVG):
        return "pool", int((_adaptive_kernel(m, x, out, False) + 1) * out.numel())
    if isinstance(m, nn.Linear):
        return "linear", (2 * m.in_features - 1) * out.numel()
    return None


def thop_0_0_31(m, x, out):
    """thop 0.0.31.post2005241907 (PyPI, May 2020; thop/vision/basic_hooks.py): conv out*(cin/groups*k + bias),
    BatchNorm 2/element (eval), ReLU/ReLU6 0, LeakyReLU 1/element, avg pool 1/output, adaptive avg pool
    (window + 1)/output, Linear in/output, Upsample 0 (nearest) to 259 (bicubic)/output; max pools,
    dropout and everything else 0."""
    if isinstance(m, _CONV):
        return "conv", _conv_macs(m, out, bias=True)
    if isinstance(m, _BN):
        return "bn", 2 * x.numel()
    if isinstance(m, nn.LeakyReLU):
        return "relu", x.numel()
    if isinstance(m, (*_RELU, *_MAX, nn.Dropout, nn.ZeroPad2d)):
        return "zero", 0
    if isinstance(m, _AVG):
        return "pool", out.numel()
    if isinstance(m, _ADAPTIVE_AVG):
        return "pool", int((_adaptive_kernel(m, x, out, False) + 1) * out.numel())
    if isinstance(m, nn.Linear):
        return "linear", m.in_features * out.numel()
    if isinstance(m, nn.Upsample):
        return _thop_upsample(m, out)
    return None


def thop_0_1_1(m, x, out):
    """thop 0.1.1.post2209072238 (PyPI's newest, Sept 2022; thop/vision/basic_hooks.py, calc_func.py): conv
    out*(cin/groups)*k (no bias), BatchNorm/LayerNorm/InstanceNorm 2/element and x2 with an affine (4),
    PReLU 1/element, Softmax batch*(3n - 1), ReLU/ReLU6/LeakyReLU 0, avg pool 1/output, adaptive avg pool
    (in/out window + 1)/output, Linear in/output; max pools, dropout and everything else 0."""
    if isinstance(m, _CONV):
        return "conv", _conv_macs(m, out, bias=False)
    if isinstance(m, (_BN, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
        affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
        return "bn", 2 * x.numel() * (2 if affine else 1)
    if isinstance(m, nn.PReLU):
        return "relu", x.numel()
    if isinstance(m, nn.Softmax):
        n = x.shape[m.dim]
        return "softmax", x.numel() // n * (3 * n - 1)
    if isinstance(m, (*_RELU, nn.LeakyReLU, *_MAX, nn.Dropout, nn.ZeroPad2d, nn.Sequential, nn.PixelShuffle)):
        return "zero", 0
    if isinstance(m, _AVG):
        return "pool", out.numel()
    if isinstance(m, _ADAPTIVE_AVG):
        return "pool", int((_adaptive_kernel(m, x, out, True) + 1) * out.numel())
    if isinstance(m, nn.Linear):
        return "linear", m.in_features * out.numel()
    if isinstance(m, nn.Upsample):
        return _thop_upsample(m, out)
    return None


def ptflops_0_1(m, x, out):
    """ptflops as of 2019 (github.com/sovrasov/flops-counter.pytorch flops_counter.py at 3c9d58c, the copy
    github.com/implus/PytorchInsight ships as classification/flops_counter.py): Conv2d output positions x
    kh*kw*cin*cout/groups + cout per position for a bias, BatchNorm2d 1/element (2 with affine),
    ReLU/ReLU6/PReLU/ELU/LeakyReLU 1/output element, every 2-D pool (max, avg, adaptive) 1/input element,
    Linear batch*in*out, Upsample 1/output element; Conv1d, BatchNorm1d and everything else 0."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        positions = out.shape[0] * out.shape[2] * out.shape[3]
        bias = m.out_channels * positions if m.bias is not None else 0
        return "conv", kh * kw * m.in_channels * (m.out_channels // m.groups) * positions + bias
    if isinstance(m, (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)):
        return "relu", out.numel()
    if isinstance(m, nn.Linear):
        return "linear", x.shape[0] * x.shape[1] * out.shape[1]
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        return "pool", x.numel()
    if isinstance(m, nn.BatchNorm2d):
        return "bn", x.numel() * (2 if m.affine else 1)
    if isinstance(m, nn.Upsample):
        return "upsample", out.numel()
    return None


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
    """A module-hook tool: a rule per layer, how a module's calls combine, how it sums and counts parameters."""

    name: str
    tool: str  # the tool and version, in words
    rule: Rule
    last_call_only: bool = False  # thop <= 0.0.23 assigns a module's ops per call: a reused module keeps its last
    float32: bool = False  # thop <= 0.0.31 of 2019 sums ops and parameters in float32 tensors
    hooked_params: bool = False  # thop >= 0.0.31 counts the parameters of modules it has a rule for (and ran)

    def count(self, model: nn.Module, x: torch.Tensor, pools_as_modules: bool = False) -> ConventionCount:
        """Per-image ops and parameters; ``pools_as_modules`` also counts functional global pools
        (``x.mean((2, 3))``, ``x.amax((2, 3))``) as the tool counts ``nn.AdaptiveAvg/MaxPool2d(1)`` -- what
        it reports for the same model written with pooling modules."""
        calls: Dict[int, List[Tuple[str, int]]] = {}
        pooled: Dict[str, List[Tuple[str, int]]] = {}
        names = {id(m): n for n, m in model.named_modules()}
        stack: List[str] = []
        handles = []

        def enter(module, args):
            stack.append(names.get(id(module), ""))

        def hook(module, args, out):
            stack.pop()
            inp = args[0] if args else None
            if not isinstance(inp, torch.Tensor) or not isinstance(out, torch.Tensor):
                return
            found = self.rule(module, inp, out)
            if found is not None:
                calls.setdefault(id(module), []).append(found)

        def on_pool(module, inp, out):
            found = self.rule(module, inp, out)
            if found is not None:
                path = f"{stack[-1]}.<{'mean' if isinstance(module, nn.AdaptiveAvgPool2d) else 'amax'}>" if stack else "<pool>"
                pooled.setdefault(path, []).append(found)

        modules = list(model.modules())
        for module in modules:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(hook))
        was_training = model.training
        try:
            with torch.no_grad():
                if pools_as_modules:
                    with _FunctionalPools(on_pool):
                        model.eval()(x)
                else:
                    model.eval()(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        batch = x.shape[0]
        by_kind: Dict[str, int] = {}
        by_module: Dict[str, int] = {}
        total = torch.zeros(1, dtype=torch.float32) if self.float32 else 0
        entries = [(names[id(m)], calls.get(id(m), [])) for m in modules] + list(pooled.items())
        for path, found in entries:
            kept = found[-1:] if self.last_call_only and not path.endswith(">") else found
            ops = sum(n for _, n in kept)
            for kind, n in kept:
                by_kind[kind] = by_kind.get(kind, 0) + n // batch
            if ops:
                by_module[path] = ops // batch
            total = total + (torch.tensor([float(int(ops))], dtype=torch.float32) if self.float32 else ops)
        ops = int(total.item()) if self.float32 else int(total)
        return ConventionCount(self.name, ops // batch, self._params(model, modules, calls), by_kind, by_module)

    def _params(self, model, modules, calls) -> int:
        if self.hooked_params:  # a module with a rule that ran: all its parameters; else look inside it
            def walk(module) -> int:
                if id(module) in calls and not isinstance(module, (nn.Sequential, nn.ModuleList)):
                    return sum(p.numel() for p in module.parameters())
                return sum(walk(child) for child in module.children())
            return walk(model)
        if not self.float32:
            return sum(p.numel() for p in model.parameters() if p.requires_grad)
        # thop 0.0.23: the own parameters of every leaf module (and here of every layer it has a rule for),
        # summed per module in float32 tensors; a module with children keeps its own parameters uncounted
        total = torch.zeros(1, dtype=torch.float32)
        for module in modules:
            if list(module.children()) and id(module) not in calls:
                continue
            own = torch.zeros(1, dtype=torch.float32)
            for p in module.parameters(recurse=False):
                own += torch.tensor([float(p.numel())], dtype=torch.float32)
            total += own
        return int(total.item())


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
    count: Callable[..., ConventionCount]  # (model, x, pools_as_modules=False) for hook conventions
    hooks: bool = False  # a module-hook tool (by_module, pools_as_modules available)


def _hook(name: str, tool: str, rule: Rule, **kw) -> Convention:
    return Convention(name, tool, HookConvention(name, tool, rule, **kw).count, hooks=True)


CONVENTIONS: Dict[str, Convention] = {c.name: c for c in (
    _hook("thop-0.0.23", "thop 0.0.23.post1907171430 (July 2019): ECA-Net's figures", thop_0_0_23,
          last_call_only=True, float32=True),
    _hook("thop-0.0.31", "thop 0.0.31.post2005241907 (May 2020): SimAM's figures", thop_0_0_31, hooked_params=True),
    _hook("thop-0.1.1", "thop 0.1.1.post2209072238 (Sept 2022, PyPI's newest)", thop_0_1_1, hooked_params=True),
    _hook("ptflops-0.1", "ptflops' 2019 hooks (PytorchInsight's flops_counter.py): the SGE/SK authors' and Triplet "
          "Attention's figures", ptflops_0_1),
    Convention("fvcore", "fvcore's FlopCountAnalysis, its own handles (conv, linear, matmul, BN, pools it knows)",
               _fvcore),
    Convention("conv-fc", "conv + fully connected multiply-adds only (the SENet, CBAM and SKNet papers' tables)",
               _conv_fc),
)}
ALIASES = {"thop": "thop-0.1.1", "ptflops": "ptflops-0.1", "conv/fc": "conv-fc", "convfc": "conv-fc"}


def convention(name: str) -> Convention:
    """A convention by name or alias (``thop`` is the newest thop, ``ptflops`` the 2019 ptflops); a one-line
    error listing the names otherwise."""
    key = ALIASES.get(name, name)
    if key not in CONVENTIONS:
        from ..errors import UnknownNameError

        raise UnknownNameError("convention", name, list(CONVENTIONS) + list(ALIASES), "see `attnbench measure --help`")
    return CONVENTIONS[key]


def count_as(model: nn.Module, x: torch.Tensor, name: str, pools_as_modules: bool = False) -> ConventionCount:
    """``model``'s count on ``x`` (per image) in convention ``name`` (see ``HookConvention.count`` for
    ``pools_as_modules``, which only module-hook conventions take)."""
    conv = convention(name)
    if pools_as_modules and not conv.hooks:
        raise ValueError(f"pools_as_modules applies to module-hook conventions, not {conv.name!r}")
    return conv.count(model, x, pools_as_modules=True) if pools_as_modules else conv.count(model, x)


def measure_as(model: nn.Module, x: torch.Tensor, name: str) -> Measurement:
    conv = convention(name)
    c = conv.count(model, x)
    return Measurement(f"macs_as_{conv.name}", c.ops, "ops", f"{conv.tool}, per image",
                       {"input_shape": list(x.shape), "convention": conv.name}, {"params": c.params, "by_kind": c.by_kind})
