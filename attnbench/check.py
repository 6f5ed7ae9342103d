"""``attnbench check``: does a module keep the plugin contract (``contract.py``)? Seconds, before any suite.

Every check is built so that a module keeping the contract passes it and a module with one defect
fails exactly one check: a check that cannot run because of an earlier failure says *skip* and
names it, instead of failing again. Checks run on the module alone at a reference input
``(1, channels, 14, 14)``, then (unless ``backbone`` is empty) attached to a timm backbone.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .contract import describe_failure, first_line, hidden_numel, hidden_state
from .errors import AttnBenchError
from .guard import deadline
from .placement import declared_context

PASS, FAIL, SKIP, INFO = "pass", "FAIL", "skip", "info"
SIZES = ((14, 14), (7, 7), (15, 9), (1, 1))  # the reference first; odd and 1x1 included
CHECK_TIMEOUT_S = 120.0
# Words a channel-count parameter is named with (split at '_' and digits): channels, in_chs, dim, C, planes, ...
CHANNEL_WORDS = frozenset("c ch chs chan chans channel channels chn nc inc inp planes inplanes dim dims d "
                          "features feature feats feat nf width filters".split())


@dataclass
class CheckResult:
    name: str
    status: str  # pass, FAIL, skip, info
    detail: str
    advice: str = ""  # one line: how to fix (failures only)
    fatal: bool = False  # nothing after it can run (the factory cannot be called)


@dataclass
class CheckReport:
    target: str
    backbone: str
    channels: int
    results: List[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> List[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (bad input -- an unknown name -- raises AttnBenchError: exit 2)."""
        return 1 if self.failed else 0

    def get(self, name: str) -> Optional[CheckResult]:
        return next((r for r in self.results if r.name == name), None)


# ---- the target: a registered name or module:Class -------------------------------------------

def _import_path(target: str):
    module_part, _, attr = target.rpartition(":")
    try:
        if module_part.endswith(".py") or "/" in module_part:
            path = Path(module_part).resolve()
            spec = importlib.util.spec_from_file_location(f"attnbench_check_{path.stem}", path)
            if spec is None or not path.is_file():
                raise FileNotFoundError(f"no such file {module_part}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # so inspect and pickle find it
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # the author's package, before it is installed
            module = importlib.import_module(module_part)
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (Exception, SystemExit) as exc:
        raise AttnBenchError(f"cannot load {target!r}: {first_line(exc)}; give a registered name (`attnbench list "
                             "modules`), package.module:Class or path/to/file.py:Class") from None


def load_factory(target: str) -> Tuple[Callable, bool]:
    """(factory, registered): a registry name, else ``package.module:Class`` / ``file.py:Class``."""
    from .registry import get_module, list_modules

    if target in list_modules() or ":" not in target:
        return get_module(target), True
    return _import_path(target), False


# ---- binding: how channels, options and context reach the factory ---------------------------

def _looks_like_channels(param: inspect.Parameter) -> bool:
    tokens = {t for t in re.split(r"[_\d]+", param.name.lower()) if t}
    typed = param.annotation in (bool, float, str, "bool", "float", "str")
    return bool(tokens & CHANNEL_WORDS) and not typed and not isinstance(param.default, (bool, float, str))


def check_binding(factory: Callable, channels: int, options: Dict) -> CheckResult:
    """How ``factory(channels, **options, **context)`` binds; FAIL when the first parameter does not look like a channel count."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return CheckResult("binding", INFO, "no introspectable signature: cannot tell which parameter gets channels")
    declared = declared_context(factory)
    clash = sorted(set(options) & set(declared))
    if clash:
        return CheckResult("binding", FAIL, f"options {clash} are context keywords attnbench fills per site",
                           "drop them from the options", fatal=True)
    try:
        bound = sig.bind(channels, **options, **{k: None for k in declared})
    except TypeError as exc:
        return CheckResult("binding", FAIL, f"factory{sig} cannot take (channels, **{sorted(options)}): {exc}",
                           "fix the options, or give the factory a first positional parameter for the channel count",
                           fatal=True)
    first = next(iter(sig.parameters.values()), None)
    if first is not None and first.kind == inspect.Parameter.VAR_POSITIONAL:
        return CheckResult("binding", INFO, f"channels={channels} goes to *{first.name}: cannot tell how it is used")
    keys = {k: v for k, v in bound.arguments.items() if k not in declared}
    text = ", ".join(f"{k}={v!r}" for k, v in keys.items())
    text += f"; context filled per site: {', '.join(declared)}" if declared else ""
    if not _looks_like_channels(first):
        default = "" if first.default is inspect.Parameter.empty else f" (default {first.default!r})"
        return CheckResult("binding", FAIL, f"the channel count {channels} binds to the first parameter "
                           f"{first.name!r}{default}, which does not look like a channel count; bound: {text}",
                           f"register an adapter: `lambda channels, **kw: {getattr(factory, '__name__', 'Module')}"
                           f"(<its channel parameter>=channels, **kw)`, or make channels the first parameter")
    return CheckResult("binding", PASS, text)


def _placement_info(factory: Callable) -> CheckResult:
    placement = getattr(factory, "placement", None)
    stages = getattr(factory, "default_stages", None)
    return CheckResult("placement", INFO, f"placement {placement or 'block (default)'}, default_stages "
                       f"{stages if stages is not None else 'none (every stage; stage placement: the penultimate)'}")


# ---- the module alone ------------------------------------------------------------------------

class _Maker:
    """Builds fresh, seeded copies of the module (each check gets its own, so BatchNorm statistics
    or a failed forward never leak into the next check)."""

    def __init__(self, factory: Callable, channels: int, options: Dict):
        self.factory, self.channels, self.options = factory, channels, options
        self.declared = declared_context(factory)

    def __call__(self, size: Tuple[int, int] = SIZES[0]) -> nn.Module:
        context = {"feat_size": tuple(size), "stride": 1, "stage": 3, "block_index": 0, "out_channels": self.channels}
        torch.manual_seed(0)
        module = self.factory(self.channels, **self.options, **{k: context[k] for k in self.declared})
        if not isinstance(module, nn.Module):
            raise AttnBenchError(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        return module

    def input(self, size: Tuple[int, int] = SIZES[0], batch: int = 1, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.channels, *size, generator=gen)


@dataclass
class _Run:
    size: Tuple[int, int]
    output: Optional[torch.Tensor] = None
    error: Optional[Exception] = None
    wrote_input: bool = False


def _eval_runs(make: _Maker) -> List[_Run]:
    """One eval forward per size (batch 2), recording output, error and whether the input was written."""
    runs = []
    for size in SIZES:
        run = _Run(size)
        try:
            module, x = make(size).eval(), make.input(size, batch=2)
            version, before = x._version, x.clone()
            with torch.no_grad():
                out = module(x)
            run.output = out
            run.wrote_input = x._version != version or not torch.equal(x, before)
        except Exception as exc:
            run.error = exc
        runs.append(run)
    return runs


def check_shape(runs: List[_Run], channels: int) -> CheckResult:
    bad = []
    for r in runs:
        want = (2, channels, *r.size)
        if r.error is not None:
            bad.append(f"{r.size[0]}x{r.size[1]}: raises {describe_failure(r.error)}")
        elif not isinstance(r.output, torch.Tensor) or tuple(r.output.shape) != want:
            got = tuple(r.output.shape) if isinstance(r.output, torch.Tensor) else type(r.output).__name__
            bad.append(f"{r.size[0]}x{r.size[1]}: returned {got} for {want}")
    sizes = ", ".join(f"{h}x{w}" for h, w in SIZES)
    if bad:
        return CheckResult("shape", FAIL, "; ".join(bad), "return a tensor of the input's (N, C, H, W) shape at every "
                           "size (1x1 and odd sizes included); keep pooling/strides inside a gate branch")
    return CheckResult("shape", PASS, f"(N, C, H, W) kept at {sizes} (batch 2)")


def check_inplace(runs: List[_Run]) -> CheckResult:
    written = [f"{r.size[0]}x{r.size[1]}" for r in runs if r.wrote_input]
    if written:
        return CheckResult("input", FAIL, f"forward writes into its input (at {', '.join(written)}): the backbone's "
                           "tensor changes under it, which breaks the training step",
                           "compute out of place: `x * g`, not `x.mul_(g)` / `x *= g` / `nn.ReLU(inplace=True)` on x")
    return CheckResult("input", PASS, "input left unchanged")


def check_finite(runs: List[_Run]) -> CheckResult:
    bad = [f"{r.size[0]}x{r.size[1]}" for r in runs if isinstance(r.output, torch.Tensor)
           and r.output.is_floating_point() and not bool(torch.isfinite(r.output).all())]
    if bad:
        return CheckResult("finite", FAIL, f"NaN/inf in the output at {', '.join(bad)}",
                           "guard small inputs: unbiased std/var of one element is NaN (use unbiased=False, "
                           "add eps before sqrt/division)")
    return CheckResult("finite", PASS, "finite output at every size")


def check_state(module: nn.Module) -> CheckResult:
    found = hidden_state(module)
    if not found:
        return CheckResult("state", PASS, "every tensor and submodule is registered (parameters/buffers/children)")
    names = ", ".join(f"{p} ({type(o).__name__})" for p, o in found[:6]) + (" ..." if len(found) > 6 else "")
    return CheckResult("state", FAIL, f"not seen by parameters()/buffers()/.to()/state_dict(): {names}; "
                       f"{hidden_numel(found):,} elements", "keep submodules in nn.ModuleList/nn.ModuleDict, tensors "
                       "as buffers (self.register_buffer) or nn.Parameter")


def check_gradients(make: _Maker) -> CheckResult:
    module = make().train()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        return CheckResult("gradients", PASS, "no trainable parameters")
    out = module(make.input(batch=2))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))  # no symmetry can cancel it
    (out * weights).sum().backward()
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        return CheckResult("gradients", FAIL, f"no gradient reaches {', '.join(missing[:6])}"
                           + (" ..." if len(missing) > 6 else ""), "use every parameter in forward without "
                           "detach()/no_grad, or freeze it (requires_grad=False) / drop it")
    zero = [n for n, p in trainable if not bool(p.grad.any())]
    note = f"; zero at init for {', '.join(zero[:4])} (a zero-initialised layer?)" if zero else ""
    return CheckResult("gradients", PASS, f"all {len(trainable)} parameter tensors get a gradient{note}")


def check_train_batch1(make: _Maker) -> CheckResult:
    module = make().train()
    try:
        with torch.no_grad():
            module(make.input(batch=1))
    except Exception as exc:
        return CheckResult("train batch 1", FAIL, describe_failure(exc), "train-mode metrics run at batch 1: normalise "
                           "pooled (N, C) features with LayerNorm/GroupNorm, not BatchNorm1d")
    return CheckResult("train batch 1", PASS, "train mode runs at batch 1")


def check_deterministic(make: _Maker) -> CheckResult:
    module, x = make().eval(), make.input()
    with torch.no_grad():
        a, b = module(x.clone()), module(x.clone())
    if not torch.equal(a, b):
        return CheckResult("deterministic", FAIL, f"two eval forwards of one input differ (max |Δ| "
                           f"{float((a - b).abs().max()):.3g})", "no randomness in eval: dropout via nn.Dropout or "
                           "F.dropout(..., training=self.training), no torch.rand in forward")
    return CheckResult("deterministic", PASS, "eval output repeats exactly")


def check_flops(make: _Maker, state_failed: bool) -> Tuple[CheckResult, CheckResult]:
    """(counters check, cost info) at the reference size."""
    from .measures.flops import count_flops

    module, x = make().eval(), make.input()
    params = sum(p.numel() for p in module.parameters())
    try:
        fc = count_flops(module, x)
    except Exception as exc:
        if state_failed:
            return (CheckResult("macs", SKIP, f"the trace fails because of the unregistered state above ({first_line(exc)})"),
                    CheckResult("cost", INFO, f"{params:,} registered parameters"))
        return (CheckResult("macs", FAIL, f"the MAC counters cannot trace it: {describe_failure(exc)}",
                            "return a single tensor; no data-dependent Python control flow on tensor values"),
                CheckResult("cost", INFO, f"{params:,} parameters"))
    shape = "x".join(map(str, x.shape))
    cost = CheckResult("cost", INFO, f"{params:,} parameters, {fc.total:,} MACs at {shape}")
    if fc.unhandled:
        return (CheckResult("macs", FAIL, f"operators no counter handles: {fc.unhandled} (not counted: the MACs "
                            "would be too low)", "ask for a rule in attnbench/measures/macs_rules.py, or use "
                            "counted operators"), cost)
    agree = "both counters agree" if fc.counters_agree else f"counters differ: {fc.counter_difference}"
    return CheckResult("macs", PASS, f"traced by both counters, no unhandled operator; {agree}"), cost


def check_device(make: _Maker, state_failed: bool) -> List[CheckResult]:
    """Run on the meta device (no data, any machine): a tensor made on the CPU in forward, or not
    moved by ``.to()``, meets meta tensors and raises. On CUDA, the real thing too."""
    if state_failed:
        return [CheckResult("device", SKIP, "the unregistered state above stays behind on .to(device)")]
    results = []
    module = make().eval().to("meta")
    try:
        with torch.no_grad():
            out = module(make.input().to("meta"))
        moved = isinstance(out, torch.Tensor) and out.device.type == "meta"
        results.append(CheckResult("device", PASS if moved else FAIL, ".to(device) moves everything: runs on the meta "
                                   "device" if moved else f"output on {getattr(out, 'device', '?')} for a meta input",
                                   "" if moved else "create tensors with device=x.device (or *_like(x))"))
    except Exception as exc:
        if "device" not in str(exc):
            results.append(CheckResult("device", INFO, f"cannot run on the meta device ({first_line(exc)}); "
                                       "run `attnbench check` on a CUDA machine for this check"))
        else:
            results.append(CheckResult("device", FAIL, f"forward mixes devices after .to(): {describe_failure(exc)}",
                                       "create tensors in forward with device=x.device, dtype=x.dtype (or *_like(x))"))
    if not torch.cuda.is_available():
        results.append(CheckResult("cuda", INFO, "CUDA part skipped: no CUDA device here"))
    elif results[0].status == PASS:
        module = make().eval().cuda()
        with torch.no_grad():
            module(make.input().cuda())
        results.append(CheckResult("cuda", PASS, "runs on CUDA after .cuda()"))
    return results


# ---- gate or transform, own residual (a heuristic over the operators run) --------------------

_VIEWS = frozenset("view _unsafe_view reshape expand permute transpose t contiguous clone alias squeeze unsqueeze "
                   "flatten unflatten _reshape_alias as_strided slice select detach".split())


class _Lineage(TorchDispatchMode):
    """Tags every tensor by how it derives from the input x: 'input' (x or a view), 'gate'
    (x times something, products and sums of such), 'residual' (x + something else)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.kind = {id(x): "input"}
        self.keep = [x]  # ids stay unique while tensors are alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__.rstrip("_")
        kinds = [self.kind.get(id(t)) for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        tag = None
        if name in _VIEWS and kinds:
            tag = kinds[0]
        elif name in ("mul", "div") and any(k in ("input", "gate") for k in kinds):
            tag = "gate"
        elif name in ("add", "sub") and kinds:
            tagged = [k in ("input", "gate") for k in kinds]
            tag = "gate" if all(tagged) else "residual" if "input" in kinds else None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.keep.append(t)
                if tag is None:
                    self.kind.pop(id(t), None)
                else:
                    self.kind[id(t)] = tag
        return out


def check_kind(make: _Maker) -> CheckResult:
    module, x = make().eval(), make.input()
    before = x.clone()
    with torch.no_grad(), _Lineage(x) as lineage:
        y = module(x)
    kind = lineage.kind.get(id(y))
    identity = isinstance(y, torch.Tensor) and y.shape == x.shape and torch.equal(y, before)
    text = {"gate": "gate: output = input x g", "residual": "transform with its own residual: output = input + f(input)",
            "input": "identity: returns its input"}.get(kind, "transform: output is not input x g")
    if identity and kind != "input":
        text += "; equals its input at init (a zero-initialised branch)"
    note = "; in a block slot that is a second shortcut, inside the block's" if kind == "residual" else ""
    return CheckResult("kind", INFO, f"{text}{note} (heuristic, from the operators run)")


# ---- the whole check -------------------------------------------------------------------------

def _guarded(name: str, fn: Callable[[], object]):
    """Run one check; any error is that check's failure, named with the plugin's file:line."""
    try:
        with deadline(CHECK_TIMEOUT_S, f"check {name!r}"):
            return fn()
    except Exception as exc:
        return CheckResult(name, FAIL, describe_failure(exc), "see the plugin line named above")


def _source(module: nn.Module) -> str:
    try:
        path = Path(inspect.getsourcefile(type(module)) or "?")
        return "/".join(path.parts[-2:])
    except TypeError:
        return "built-in"


def _module_checks(make: _Maker, report: CheckReport) -> bool:
    """The module-alone checks; True when it runs at the reference size (the backbone check may go on)."""
    module = _guarded("build", make)
    if isinstance(module, CheckResult):
        report.results.append(module)
        return False
    report.results.append(CheckResult("build", PASS, f"{type(module).__name__} ({_source(module)})"))
    state = check_state(module)
    report.results.append(state)
    runs = _eval_runs(make)
    report.results += [check_shape(runs, make.channels), check_inplace(runs), check_finite(runs)]
    if runs[0].error is not None:
        names = ("gradients", "train batch 1", "deterministic", "macs", "device", "kind")
        report.results += [CheckResult(n, SKIP, "needs a module that runs at the reference size (see shape)") for n in names]
        return False
    hidden = state.status == FAIL
    report.results += [_guarded("gradients", lambda: check_gradients(make)),
                       _guarded("train batch 1", lambda: check_train_batch1(make)),
                       _guarded("deterministic", lambda: check_deterministic(make))]
    flops = _guarded("macs", lambda: check_flops(make, hidden))
    report.results += list(flops) if isinstance(flops, tuple) else [flops]
    device = _guarded("device", lambda: check_device(make, hidden))
    report.results += device if isinstance(device, list) else [device]
    report.results.append(_guarded("kind", lambda: check_kind(make)))
    return runs[0].output is not None and tuple(runs[0].output.shape) == tuple(make.input(batch=2).shape)


def check_backbone(name: str, backbone: str, options: Dict, input_size: int, hidden: bool) -> CheckResult:
    """Attached to ``backbone``: builds, runs, and both counters trace it there."""
    from .attach import attention_parameters, build, describe
    from .measures.flops import count_flops

    model = build(backbone, name, input_size=input_size, **options).eval()
    where = describe(model.attnbench_attachment.as_dict())
    x = torch.randn(1, 3, input_size, input_size)
    with torch.no_grad():
        model(x)
    try:
        fc = count_flops(model, x)
    except Exception as exc:
        if hidden:
            return CheckResult(f"on {backbone}", SKIP, f"{where}: runs; MACs not counted because of the unregistered "
                               f"state above ({first_line(exc)})")
        raise
    return CheckResult(f"on {backbone}", PASS, f"{where}: +{attention_parameters(model):,} parameters, "
                       f"+{fc.attention:,} MACs in the attached modules at {input_size}x{input_size}")


def run_check(target: str, backbone: str = "resnet18", options: Optional[Dict] = None, *, channels: int = 64,
              input_size: int = 224) -> CheckReport:
    """Check ``target`` (a registered name, ``package.module:Class`` or ``path/file.py:Class``) against the
    plugin contract; ``backbone=""`` checks the module alone. Raises AttnBenchError for a target that cannot be loaded."""
    with warnings.catch_warnings():  # the checklist is the output; a plugin's warnings are not
        warnings.simplefilter("ignore")
        return _run_check(target, backbone, options, channels, input_size)


def _run_check(target: str, backbone: str, options: Optional[Dict], channels: int, input_size: int) -> CheckReport:
    from .attach import split_options
    from .registry import MODULES

    factory, registered = load_factory(target)
    options = dict(options or {})
    _, module_options = split_options(options)
    report = CheckReport(target, backbone, channels)
    binding = check_binding(factory, channels, module_options)
    report.results += [binding, _placement_info(factory)]
    if binding.fatal:
        return report  # it cannot be called with these options: nothing else can run
    runs_alone = _module_checks(_Maker(factory, channels, module_options), report)
    if not backbone:
        return report
    if not runs_alone:
        report.results.append(CheckResult(f"on {backbone}", SKIP, "not attached: the module fails alone (above)"))
        return report
    name = target if registered else f"check:{getattr(factory, '__name__', target)}"
    if not registered:
        MODULES.register(name, factory, override=True)
    try:
        hidden = report.get("state").status == FAIL
        result = _guarded(f"on {backbone}", lambda: check_backbone(name, backbone, options, input_size, hidden))
        if result.status == FAIL:
            result.advice = (f"it runs alone at {channels} channels but not at the site named: derive every width from "
                             "`channels` (and `out_channels`/`stride`/`feat_size` where the factory names them)")
        report.results.append(result)
    finally:
        if not registered:
            MODULES.unregister(name)
    return report


def render_check(report: CheckReport) -> str:
    """The checklist: one line per check, one line of advice under each failure, a summary line."""
    lines = [f"attnbench check {report.target}" + (f" on {report.backbone}" if report.backbone else "")
             + f" (channels {report.channels})"]
    for r in report.results:
        lines.append(f"  {r.status:<5} {r.name:<14} {r.detail}")
        if r.status == FAIL and r.advice:
            lines.append(f"  {'':<5} {'':<14} fix: {r.advice}")
    counts = {s: sum(r.status == s for r in report.results) for s in (PASS, FAIL, SKIP, INFO)}
    lines.append(f"{counts[FAIL]} failed, {counts[PASS]} passed, {counts[SKIP]} skipped, {counts[INFO]} info"
                 f" -> exit {report.exit_code}")
    return "\n".join(lines)
