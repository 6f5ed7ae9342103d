"""``attnbench check``: does a module keep the contract, and what will it cost? A plugin author's checklist."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import sys
import traceback
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..attach.contract import (  # noqa: F401
    ALIASED_ADVICE,
    CHANNEL_WORDS,
    PLACEMENTS,
    Limits,
    adapter_advice,
    binding_advice,
    binding_problem,
    class_folder,
    current_roots,
    declared_limits,
    describe_failure,
    factory_name,
    first_line,
    forward_line,
    hidden_numel,
    hidden_state,
    looks_like_channels,
    module_frame,
    package_roots,
    plugin_code,
    shares_memory,
)
from ..attach.placement import declared_context
from ..errors import AttnBenchError, ModuleDoesNotFit, UnknownNameError, Unsupported, UsageError
from ..guard.cell import CellTimeout, contained, deadline
from ..guard.interrupts import watching
from ..guard.process_state import Watch
from .limits import BACKBONE_SCALE, CHECK_TIMEOUT_S

PASS, FAIL, SKIP, INFO = "pass", "FAIL", "skip", "info"


REFERENCES = ((14, 14), (16, 16), (12, 12))  # the first one the module supports is the reference size


OTHER_SIZES = ((7, 7), (15, 9), (1, 1))  # odd and 1x1 included


SIZES = REFERENCES[:1] + OTHER_SIZES


MAX_CHANNELS, MAX_INPUT_SIZE = 65536, 4096  # beyond these the check's own tensors exhaust a workstation


BATCH_RTOL = 1e-4  # sample 0's output may move this much (of its largest magnitude) with the rest of the batch


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
        """0 when nothing failed, 1 otherwise (bad input -- an unknown name, a bad flag -- raises AttnBenchError: exit 2)."""
        return 1 if self.failed else 0

    def get(self, name: str) -> Optional[CheckResult]:
        return next((r for r in self.results if r.name == name), None)


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
    except BaseException as exc:  # sys.exit() or a KeyboardInterrupt no signal raised, on import too
        if not contained(exc):
            raise
        raise UsageError(
            f"cannot load {target!r}: {first_line(exc)}; give a registered name (`attnbench list "
            "modules`), package.module:Class or path/to/file.py:Class"
        ) from None


def target_roots(target: str) -> Tuple[str, ...]:
    """Where the checked module's own code lives, known before anything is imported: the folder of a
    ``path/file.py``, the top-level package of ``package.module:Class`` or of a registered name's entry point.
    Messages and warnings name lines there (never timm's, einops' or another plugin's)."""
    from ..registry import MODULES

    module_part = target.rpartition(":")[0]
    if module_part.endswith(".py") or "/" in module_part:
        return (str(Path(module_part).resolve().parent) + "/",)
    entry = MODULES.entry(target)
    if entry or not module_part:
        return package_roots(entry.partition(":")[0]) if entry else ()
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the author's package, before it is installed
    return package_roots(module_part)


def load_factory(target: str) -> Tuple[Callable, bool]:
    """(factory, registered): a registry name, else ``package.module:Class`` / ``file.py:Class``."""
    from ..registry import get_module, list_modules

    if target in list_modules() or ":" not in target:
        return get_module(target), True
    return _import_path(target), False


def _usage(channels, input_size, timeout, backbone: str, options: Dict) -> None:
    """Command-line values are the caller's to fix (exit 2), never the module's defect."""
    for flag, value, top in (("--channels", channels, MAX_CHANNELS), ("--input-size", input_size, MAX_INPUT_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise UsageError(f"{flag} must be an integer from 1 to {top:,}, got {value!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    if backbone:
        from ..attach.backbone import backbone_family

        backbone_family(backbone)  # UnknownNameError with close matches
    placement = options.get("placement")
    if isinstance(placement, str) and placement not in PLACEMENTS:  # a per-block-kind mapping is checked by build
        raise UsageError(f"option placement={placement!r} is not one of {', '.join(PLACEMENTS)}")


def check_binding(factory: Callable, channels: int, options: Dict, name: str = "") -> CheckResult:
    """How ``factory(channels, **options, **context)`` binds; FAIL when the first parameter does not look like a
    channel count, or when the factory cannot be called with a channel count alone (the adapter that fits its
    signature is the fix). Options it does not take are the caller's error: AttnBenchError."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return CheckResult("binding", INFO, "no introspectable signature: cannot tell which parameter gets channels")
    declared = declared_context(factory)
    clash = sorted(set(options) & set(declared))
    if clash:
        raise UsageError(f"options {clash} are context keywords attnbench fills per site; drop them from -O")
    problem = binding_problem(factory, options, declared)
    if problem and problem[1] == "options":
        raise UsageError(
            f"{factory_name(factory)}{sig} does not accept options {sorted(options)}: {problem[0]}; fix -O"
        )
    if problem:
        return CheckResult(
            "binding",
            FAIL,
            f"{factory_name(factory)}{sig} cannot be called as factory(channels, **options): {problem[0]}",
            binding_advice(factory, declared, name),
            fatal=True,
        )
    bound = sig.bind(channels, **options, **{k: None for k in declared})
    first = next(iter(sig.parameters.values()), None)
    if first is not None and first.kind == inspect.Parameter.VAR_POSITIONAL:
        return CheckResult("binding", INFO, f"channels={channels} goes to *{first.name}: cannot tell how it is used")
    keys = {k: v for k, v in bound.arguments.items() if k not in declared}
    text = ", ".join(f"{k}={v!r}" for k, v in keys.items())
    text += f"; context filled per site: {', '.join(declared)}" if declared else ""
    if not looks_like_channels(first):
        default = "" if first.default is inspect.Parameter.empty else f" (default {first.default!r})"
        return CheckResult(
            "binding",
            FAIL,
            f"the channel count {channels} binds to the first parameter "
            f"{first.name!r}{default}, which does not look like a channel count; bound: {text}",
            adapter_advice(factory),
        )
    return CheckResult("binding", PASS, text)


def _placement_info(factory: Callable) -> CheckResult:
    placement = getattr(factory, "placement", None)
    stages = getattr(factory, "default_stages", None)
    return CheckResult(
        "placement",
        INFO,
        f"placement {placement or 'block (default)'}, default_stages "
        f"{stages if stages is not None else 'none (every stage; stage placement: the penultimate)'}",
    )


class _Maker:
    """Builds fresh, seeded copies of the module (each check gets its own, so BatchNorm statistics
    or a failed forward never leak into the next check)."""

    def __init__(self, factory: Callable, channels: int, options: Dict):
        self.factory, self.channels, self.options = factory, channels, options
        self.declared = declared_context(factory)
        self.roots: Tuple[str, ...] = current_roots()  # where the module's own code lives (set after build)
        self.reference: Tuple[int, int] = REFERENCES[0]

    def __call__(self, size: Optional[Tuple[int, int]] = None) -> nn.Module:
        size = tuple(size or self.reference)
        context = {
            "feat_size": size,
            "stride": 1,
            "stage": 3,
            "block_index": 0,
            "out_channels": self.channels,
            "conv_groups": 1,
        }  # a block-slot site; context keys added later get None
        torch.manual_seed(0)
        module = self.factory(self.channels, **self.options, **{k: context.get(k) for k in self.declared})
        if not isinstance(module, nn.Module):
            raise ModuleDoesNotFit(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        return module

    def input(self, size: Optional[Tuple[int, int]] = None, batch: int = 1, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.channels, *(size or self.reference), generator=gen)


class _Steps:
    """Runs each step under the deadline; after a timeout the remaining steps skip (one failure, not ten)."""

    def __init__(self, timeout: float):
        self.timeout, self.stopped = timeout, ""

    def run(self, name: str, fn: Callable[[], object], scale: float = 1.0):
        if self.stopped:
            return CheckResult(name, SKIP, f"not run: {self.stopped}")
        try:
            with _settled(name), deadline(self.timeout * scale, f"check {name!r}"):
                return fn()
        except CellTimeout:
            return self.timed_out(name, scale)
        except Exception as exc:
            if _is_usage(exc):
                raise
            return CheckResult(name, FAIL, describe_failure(exc), "see the plugin line named above")

    def timed_out(self, name: str, scale: float = 1.0) -> CheckResult:
        self.stopped = f"{name!r} ran past the {self.timeout * scale:g} s timeout"
        return CheckResult(
            name,
            FAIL,
            f"ran past its timeout of {self.timeout * scale:g} s: a hung or very slow forward",
            TIMEOUT_ADVICE,
        )


TIMEOUT_ADVICE = "forward must finish: no unbounded loop or wait (for a module slow by design: raise --timeout)"


def _is_usage(exc: BaseException) -> bool:
    """attnbench's own configuration errors (a bad placement, options given to the wrong placement): exactly
    AttnBenchError or an unknown name -- not a module that does not fit, times out or is unsupported."""
    return type(exc) is AttnBenchError or isinstance(exc, UnknownNameError)


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass
class _Run:
    size: Tuple[int, int]
    output: object = None
    error: Optional[BaseException] = None
    wrote_input: bool = False
    outside: str = ""  # why this size is outside the module's limits (declared, or Unsupported at build)


def _eval_runs(make: _Maker, limits: Limits, steps: _Steps) -> List[_Run]:
    """One eval forward per size (batch 2), recording output, error and whether the input was written."""
    runs = []
    for size in (make.reference,) + OTHER_SIZES:
        run = _Run(size)
        runs.append(run)
        run.outside = limits.spatial(size) or ""
        if run.outside or steps.stopped:
            run.outside = run.outside or f"not run: {steps.stopped}"
            continue
        try:
            with _settled(f"shape at {_size(size)}"), deadline(steps.timeout, f"check at {_size(size)}"):
                module, x = make(size).eval(), make.input(size, batch=2)
                version, before = x._version, x.clone()
                with torch.no_grad():
                    out = module(x)
            run.output = out
            run.wrote_input = x._version != version or not torch.equal(x, before)
        except Unsupported as exc:
            run.outside = f"unsupported: {first_line(exc).partition(': ')[2]}"
        except CellTimeout:
            run.error = CellTimeout(f"{steps.timeout:g} s")
            steps.timed_out(f"shape at {_size(size)}")
        except Exception as exc:
            if _is_usage(exc):
                raise
            run.error = exc
    return runs


def _describe_output(out) -> str:
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        parts = [str(tuple(o.shape)) if isinstance(o, torch.Tensor) else type(o).__name__ for o in out[:3]]
        return f"a {type(out).__name__} of {len(out)} ({', '.join(parts)}{', ...' if len(out) > 3 else ''})"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(map(str, out))[:4]}"
    return type(out).__name__


SIZE_ADVICE = (
    "take every H and W the backbone gives (derive block/window/patch sizes from the input, pad, or pool "
    "inside a gate branch), or raise attnbench.errors.Unsupported at build for a `feat_size` it cannot take "
    "(name `feat_size` in the factory), or declare `min_spatial` for sizes below its limit"
)


WIDTH_ADVICE = (
    "derive every width from `channels` (and `out_channels`/`stride`/`feat_size` where the factory names "
    "them): a width or feature size is hard-coded"
)


PROBE_SIZES = ((14, 14), (16, 16), (12, 12), (28, 28), (8, 8), (7, 7))


def _runs(make: "_Maker", channels: int, size: Tuple[int, int], timeout: float) -> bool:
    """Whether a fresh module built for ``channels`` maps (1, channels, *size) to that shape in eval."""
    try:
        with deadline(timeout, "check diagnosis"), torch.no_grad():
            module = _Maker(make.factory, channels, make.options)(size).eval()
            y = module(torch.randn(1, channels, *size))
        return isinstance(y, torch.Tensor) and tuple(y.shape) == (1, channels, *size)
    except Exception:  # CellTimeout too: a diagnosis, never a new failure
        return False


def _default_width(factory: Callable) -> Optional[int]:
    try:
        first = next(iter(inspect.signature(factory).parameters.values()), None)
    except (TypeError, ValueError):
        return None
    default = getattr(first, "default", None)
    return default if isinstance(default, int) and not isinstance(default, bool) and default > 0 else None


def fit_advice(make: "_Maker", failed: Sequence[Tuple[int, int]], timeout: float) -> str:
    """Advice that fits why a module fails at some sizes, found by running it where it did not fail: its own
    size rule (it runs at another H x W: HaloNet's block size at a 7x7 map) or a width it does not derive
    from ``channels`` (it runs only at its own default width: DANet's 512); '' when neither tells."""
    works = [z for z in PROBE_SIZES if z not in failed and _runs(make, make.channels, z, timeout)]
    if works:
        return (
            f"it runs at {_size(works[0])} but not at {', '.join(_size(z) for z in failed)} ({make.channels} "
            f"channels): {SIZE_ADVICE}"
        )
    width = _default_width(make.factory)
    if (
        width is not None
        and width != make.channels
        and any(_runs(make, width, z, timeout) for z in (*failed[:1], (7, 7)))
    ):
        return f"it runs at its default width {width} but not at {make.channels} channels: {WIDTH_ADVICE}"
    return ""


def check_shape(
    runs: List[_Run], channels: int, make: Optional["_Maker"] = None, timeout: float = CHECK_TIMEOUT_S
) -> CheckResult:
    bad, ran, outside = [], [], {}
    for r in runs:
        want = (2, channels, *r.size)
        if r.outside:
            outside.setdefault(r.outside, []).append(_size(r.size))
        elif isinstance(r.error, CellTimeout):
            return CheckResult(
                "shape",
                FAIL,
                f"{_size(r.size)}: the forward ran past the timeout ({r.error}): a hung or "
                "very slow forward; the other checks are not run",
                TIMEOUT_ADVICE,
            )
        elif r.error is not None:
            bad.append(f"{_size(r.size)}: raises {describe_failure(r.error)}")
        elif not isinstance(r.output, torch.Tensor) or tuple(r.output.shape) != want:
            bad.append(f"{_size(r.size)}: returned {_describe_output(r.output)} for {want}")
        else:
            ran.append(_size(r.size))
    skipped = "".join(f"; skipped {', '.join(sizes)} ({why})" for why, sizes in outside.items())
    if bad:
        several = any(isinstance(r.output, (tuple, list, dict)) for r in runs)
        raised = [r.size for r in runs if r.error is not None and not isinstance(r.error, CellTimeout)]
        fitted = fit_advice(make, raised, timeout) if make is not None and raised and not several else ""
        advice = (
            "return one tensor, the input's (N, C, H, W) shape: forward returns several values (attention maps "
            "too?); return only the features, or wrap it: `forward(self, x): return self.inner(x)[0]`"
            if several
            else fitted
            or "return a tensor of the input's (N, C, H, W) shape at every size (1x1 and odd sizes "
            "included; keep pooling/strides inside a gate branch), or declare `min_spatial` for sizes it cannot take"
        )
        return CheckResult("shape", FAIL, "; ".join(bad) + skipped, advice)
    return CheckResult("shape", PASS, f"(N, C, H, W) kept at {', '.join(ran)} (batch 2){skipped}")


def check_inplace(runs: List[_Run]) -> CheckResult:
    written = [_size(r.size) for r in runs if r.wrote_input]
    if written:
        return CheckResult(
            "input",
            FAIL,
            f"forward writes into its input (at {', '.join(written)}): the backbone's "
            "tensor changes under it, which breaks the training step",
            "compute out of place: `x * g`, not `x.mul_(g)` / `x *= g` / `nn.ReLU(inplace=True)` on x",
        )
    return CheckResult("input", PASS, "input left unchanged")


def check_output(runs: List[_Run], make: "_Maker") -> CheckResult:
    """The output owns its memory: an ``expand``/``expand_as`` view (stride 0) passes every module-alone check,
    but a block that adds the shortcut in place (timm's ResNet blocks: ``x += shortcut``) cannot write into it."""
    shared = [r for r in runs if shares_memory(r.output)]
    if shared:
        line = forward_line(make())
        return CheckResult(
            "output",
            FAIL,
            f"returns an expand()-style view whose elements share memory (strides "
            f"{tuple(shared[0].output.stride())} at {_size(shared[0].size)})"
            + (f", from {line}" if line else "")
            + ": a block's in-place `x += shortcut` cannot write into "
            "it, so it cannot run inside a ResNet",
            ALIASED_ADVICE,
        )
    if not any(isinstance(r.output, torch.Tensor) for r in runs):
        return CheckResult("output", SKIP, "no tensor output to look at (see shape)")
    return CheckResult("output", PASS, "output owns its memory (a block may add into it in place)")


def check_finite(runs: List[_Run]) -> CheckResult:
    bad = [
        _size(r.size)
        for r in runs
        if isinstance(r.output, torch.Tensor)
        and r.output.is_floating_point()
        and not bool(torch.isfinite(r.output).all())
    ]
    if bad:
        return CheckResult(
            "finite",
            FAIL,
            f"NaN/inf in the output at {', '.join(bad)}",
            "guard small inputs: unbiased std/var of one element is NaN (use unbiased=False, "
            "add eps before sqrt/division), or declare `min_spatial` when the official code does the same",
        )
    return CheckResult("finite", PASS, "finite output at every size run")


def check_state(module: nn.Module) -> CheckResult:
    found = hidden_state(module)
    if not found:
        return CheckResult("state", PASS, "every tensor and submodule is registered (parameters/buffers/children)")
    names = ", ".join(f"{p} ({type(o).__name__})" for p, o in found[:6]) + (" ..." if len(found) > 6 else "")
    return CheckResult(
        "state",
        FAIL,
        f"not seen by parameters()/buffers()/.to()/state_dict(): {names}; {hidden_numel(found):,} elements",
        "keep submodules in nn.ModuleList/nn.ModuleDict, tensors as buffers (self.register_buffer) or nn.Parameter",
    )


def _train_batch(limits: Limits) -> int:
    return max(2, limits.min_train_batch)


def check_gradients(make: _Maker, limits: Limits) -> CheckResult:
    module = make().train()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        return CheckResult("gradients", PASS, "no trainable parameters")
    out = module(make.input(batch=_train_batch(limits)))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))  # no symmetry can cancel it
    (out * weights).sum().backward()
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        return CheckResult(
            "gradients",
            FAIL,
            f"no gradient reaches {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""),
            "use every parameter in forward without detach()/no_grad, or freeze it (requires_grad=False) / drop it",
        )
    zero = [n for n, p in trainable if not bool(p.grad.any())]
    note = f"; zero at init for {', '.join(zero[:4])} (a zero-initialised layer?)" if zero else ""
    return CheckResult("gradients", PASS, f"all {len(trainable)} parameter tensors get a gradient{note}")


def check_train_batch1(make: _Maker, limits: Limits) -> CheckResult:
    batch, outside = limits.min_train_batch, limits.train_batch(1)
    module = make().train()
    try:
        with torch.no_grad():
            module(make.input(batch=batch))
    except Exception as exc:
        return CheckResult(
            "train batch 1",
            FAIL,
            (f"at its declared min_train_batch {batch}: " if outside else "") + describe_failure(exc),
            "train-mode metrics run at the suite's batch (1 by default): "
            "normalise pooled (N, C) features with LayerNorm/GroupNorm, not BatchNorm1d -- or declare "
            "`min_train_batch = 2` when the official code does the same",
        )
    if outside:
        return CheckResult("train batch 1", SKIP, f"{outside}; train mode runs at batch {batch}")
    return CheckResult("train batch 1", PASS, "train mode runs at batch 1")


def check_deterministic(make: _Maker) -> CheckResult:
    module, x = make().eval(), make.input()
    with torch.no_grad():
        a, b = module(x.clone()), module(x.clone())
    if not torch.equal(a, b):
        return CheckResult(
            "deterministic",
            FAIL,
            f"two eval forwards of one input differ (max |Δ| {float((a - b).abs().max()):.3g})",
            "no randomness in eval: dropout via nn.Dropout or "
            "F.dropout(..., training=self.training), no torch.rand in forward",
        )
    return CheckResult("deterministic", PASS, "eval output repeats exactly")


def check_batch(make: _Maker) -> CheckResult:
    """Sample 0's eval output must not depend on the other samples of the batch (nor on there being any):
    a normalisation over dim 0 (``F.softmax(x)`` without ``dim`` on a 3-D tensor) mixes samples, so the
    model's output for one image depends on its batch, and at batch 1 such a map is all ones."""
    module = make().eval()
    a, b, c = (make.input(batch=1, seed=s) for s in (1, 3, 4))
    with torch.no_grad():
        ab, ac, alone = module(torch.cat([a, b])), module(torch.cat([a, c])), module(a)
    scale = float(ab[0].abs().max()) or 1.0
    moved = {
        "when the other sample changes": float((ab[0] - ac[0]).abs().max()),
        "at batch 1": float((ab[0] - alone[0]).abs().max()),
    }
    bad = [
        f"{k} (max |Δ| {v:.3g}, {v / scale:.1%} of its largest value)"
        for k, v in moved.items()
        if v > BATCH_RTOL * scale
    ]
    if bad:
        return CheckResult(
            "batch",
            FAIL,
            "one sample's output depends on the rest of the batch: it moves " + " and ".join(bad),
            "normalise within a sample: give softmax/mean/norm an explicit dim "
            "other than 0 (F.softmax(x) without dim picks dim 0 for 0-, 1- and 3-D tensors)",
        )
    return CheckResult("batch", PASS, "each sample's output is independent of the rest of the batch")


def _unhandled_text(unhandled: Dict[str, int]) -> str:
    ops = sorted({op.replace("::", ".").split(".")[-1] for op in unhandled})
    return (
        f"operators with no counting rule: {', '.join(ops)} ({unhandled}); the counters list them rather than "
        "guess, so the MACs may be too low (unless they only move or create data)"
    )


def check_flops(make: _Maker, state_failed: bool) -> Tuple[CheckResult, CheckResult]:
    """(counters check, cost info) at the reference size."""
    from ..measures.flops import count_flops

    module, x = make().eval(), make.input()
    params = sum(p.numel() for p in module.parameters())
    try:
        fc = count_flops(module, x)
    except Exception as exc:
        if state_failed:
            return (
                CheckResult(
                    "macs", SKIP, f"the trace fails because of the unregistered state above ({first_line(exc)})"
                ),
                CheckResult("cost", INFO, f"{params:,} registered parameters"),
            )
        return (
            CheckResult(
                "macs",
                FAIL,
                f"the MAC counters cannot trace it: {describe_failure(exc)}",
                "return a single tensor; no data-dependent Python control flow on tensor values",
            ),
            CheckResult("cost", INFO, f"{params:,} parameters"),
        )
    shape = "x".join(map(str, x.shape))
    cost = CheckResult("cost", INFO, f"{params:,} parameters, {fc.total:,} MACs at {shape}")
    if fc.unhandled:
        return (
            CheckResult(
                "macs",
                FAIL,
                _unhandled_text(fc.unhandled),
                "ask for a rule in "
                "attnbench/measures/macs_rules.py (say what the operator computes), or use counted operators",
            ),
            cost,
        )
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
        results.append(
            CheckResult(
                "device",
                PASS if moved else FAIL,
                ".to(device) moves everything: runs on the meta device"
                if moved
                else f"output on {getattr(out, 'device', '?')} for a meta input",
                "" if moved else "create tensors with device=x.device (or *_like(x))",
            )
        )
    except CellTimeout:
        raise
    except Exception as exc:
        if "device" not in str(exc):
            results.append(
                CheckResult(
                    "device",
                    INFO,
                    f"cannot run on the meta device ({first_line(exc)}); "
                    "run `attnbench check` on a CUDA machine for this check",
                )
            )
        else:
            results.append(
                CheckResult(
                    "device",
                    FAIL,
                    f"forward mixes devices after .to(): {describe_failure(exc)}",
                    "create tensors in forward with device=x.device, dtype=x.dtype (or *_like(x))",
                )
            )
    if not torch.cuda.is_available():
        results.append(CheckResult("cuda", INFO, "CUDA part skipped: no CUDA device here"))
    elif results[0].status == PASS:
        module = make().eval().cuda()
        with torch.no_grad():
            module(make.input().cuda())
        results.append(CheckResult("cuda", PASS, "runs on CUDA after .cuda()"))
    return results


_VIEWS = frozenset(
    "view _unsafe_view reshape expand permute transpose t contiguous clone alias squeeze unsqueeze "
    "flatten unflatten _reshape_alias as_strided slice select detach".split()
)


class _Lineage(TorchDispatchMode):
    """Tags every tensor by how it derives from the input x: 'input' (x or a view), 'gate' (x times
    something, products and sums of such), 'residual' (x itself added to something derived from it)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.kind = {id(x): "input"}
        self.keep = [x]  # ids stay unique while tensors are alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__.rstrip("_")
        tensors = [t for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        kinds = [self.kind.get(id(t)) for t in tensors]
        tag = None
        if name in _VIEWS and kinds:
            tag = kinds[0]
        elif name in ("mul", "div") and any(k in ("input", "gate") for k in kinds):
            tag = "gate"
        elif name in ("add", "sub") and len(tensors) >= 2:
            if "input" in kinds and any(k != "input" for k in kinds):
                tag = "residual"  # x + f(x), whatever f(x) is (CBAM's `out + residual` included)
            elif all(k in ("input", "gate") for k in kinds):
                tag = "gate"  # x*g1 + x*g2 = x*(g1 + g2)
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
    text = {
        "gate": "gate: output = input x g",
        "residual": "transform with its own residual: output = input + f(input)",
        "input": "identity: returns its input",
    }.get(kind, "transform: output is not input x g")
    if identity and kind != "input":
        text += {
            "gate": "; equals its input at init (its gate is exactly 1 there)",
            "residual": "; equals its input at init (a zero-initialised branch)",
        }.get(kind, "; equals its input at init")
    note = "; in a block slot that is a second shortcut, inside the block's" if kind == "residual" else ""
    return CheckResult("kind", INFO, f"{text}{note} (heuristic, from the operators run)")


class _Warnings:
    """Collects the warnings the checked module's own code raises (once each, with its file:line): the
    innermost frame must lie in its code (``plugin_code``: its package, its class's folder), so what importing
    timm or another installed plugin warns, what torch, the standard library or attnbench's harness raise
    alone, and the tracer's notes about the MAC counters' own trace, are left out."""

    def __init__(self):
        self.seen: Dict[Tuple[str, str, str], int] = {}
        self._cm = warnings.catch_warnings()

    def __enter__(self) -> "_Warnings":
        self._cm.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, torch.jit.TracerWarning):
            return
        where = module_frame(traceback.extract_stack()[:-1], called_by_harness=True)
        if where is None:
            return
        text = (str(message).strip().splitlines() or [""])[0][:200]
        key = (category.__name__, text, where)
        self.seen[key] = self.seen.get(key, 0) + 1

    def results(self) -> List[CheckResult]:
        return [
            CheckResult("warning", INFO, f"{cat}: {text} (at {where}{f'; {n} times' if n > 1 else ''})")
            for (cat, text, where), n in self.seen.items()
        ]


def _source(module: nn.Module) -> str:
    try:
        path = Path(inspect.getsourcefile(type(module)) or "?")
        return "/".join(path.parts[-2:])
    except TypeError:
        return "built-in"


def _build(make: _Maker, limits: Limits, steps: _Steps):
    """(module, result): the module at the first reference size it supports; None when it cannot be built."""
    reasons = []
    sizes = REFERENCES + (((limits.min_spatial,) * 2,) if limits.min_spatial > REFERENCES[0][0] else ())
    for size in sizes:
        outside = limits.spatial(size)
        if outside:
            reasons.append(outside)
            continue
        make.reference = size
        try:
            with _settled("build"), deadline(steps.timeout, "check 'build'"):
                module = make(size)
        except Unsupported as exc:
            reasons.append(first_line(exc).partition(": ")[2])
            continue
        except CellTimeout:
            return None, steps.timed_out("build")
        except Exception as exc:
            if _is_usage(exc):
                raise
            return None, CheckResult("build", FAIL, describe_failure(exc), "see the plugin line named above")
        at = "" if size == REFERENCES[0] else f", reference size {_size(size)}"
        return module, CheckResult("build", PASS, f"{type(module).__name__} ({_source(module)}{at})")
    steps.stopped = "unsupported at every reference size (build)"
    return None, CheckResult("build", SKIP, f"unsupported at {', '.join(_size(s) for s in sizes)}: {reasons[0]}")


def _module_checks(make: _Maker, limits: Limits, steps: _Steps, report: CheckReport) -> bool:
    """The module-alone checks; True when it keeps the shape at the reference size (the backbone check may go on)."""
    names = (
        "state",
        "shape",
        "input",
        "output",
        "finite",
        "gradients",
        "train batch 1",
        "deterministic",
        "batch",
        "macs",
        "device",
        "kind",
    )
    module, build = _build(make, limits, steps)
    report.results.append(build)
    if module is None:
        why = "not run: unsupported (see build)" if build.status == SKIP else "needs a module that builds (see build)"
        report.results += [CheckResult(n, SKIP, why) for n in names]
        return False
    make.roots = current_roots() + class_folder(module)  # the module's own code, where its factory is an adapter
    with plugin_code(make.roots):
        return _alone(module, make, limits, steps, report, names)


def _alone(module: nn.Module, make: "_Maker", limits: Limits, steps: "_Steps", report: CheckReport, names) -> bool:
    state = check_state(module)
    report.results.append(state)
    runs = _eval_runs(make, limits, steps)
    report.results += [
        check_shape(runs, make.channels, make, steps.timeout),
        check_inplace(runs),
        check_output(runs, make),
        check_finite(runs),
    ]
    ref = runs[0].output
    if not isinstance(ref, torch.Tensor) or ref.dim() == 0 or ref.shape[0] != 2:
        why = (
            "not run: " + steps.stopped
            if steps.stopped
            else "needs a module that returns a batch of tensors at the reference size (see shape)"
        )
        report.results += [CheckResult(n, SKIP, why) for n in names[5:]]
        return False
    hidden = state.status == FAIL
    report.results += [
        steps.run("gradients", lambda: check_gradients(make, limits)),
        steps.run("train batch 1", lambda: check_train_batch1(make, limits)),
    ]
    determinism = steps.run("deterministic", lambda: check_deterministic(make))
    report.results.append(determinism)
    if determinism.status == PASS:
        report.results.append(steps.run("batch", lambda: check_batch(make)))
    else:
        report.results.append(CheckResult("batch", SKIP, "needs a deterministic eval forward (see deterministic)"))
    flops = steps.run("macs", lambda: check_flops(make, hidden))
    report.results += list(flops) if isinstance(flops, tuple) else [flops]
    device = steps.run("device", lambda: check_device(make, hidden))
    report.results += device if isinstance(device, list) else [device]
    report.results.append(steps.run("kind", lambda: check_kind(make)))
    return tuple(ref.shape) == tuple(make.input(batch=2).shape)


def check_backbone(
    name: str,
    backbone: str,
    options: Dict,
    input_size: int,
    hidden: bool,
    failure: Optional[List[BaseException]] = None,
) -> CheckResult:
    """Attached to ``backbone``: builds, runs, and both counters trace it there. An error the network raises
    outside the module (on what the module returned) names the block, the module's site and its forward line;
    the error is also appended to ``failure`` (for the advice)."""
    from ..attach.backbone import attention_parameters, build, describe, failure_site
    from ..measures.flops import count_flops

    model = None
    try:
        model = build(backbone, name, input_size=input_size, **options).eval()
        where = describe(model.attnbench_attachment.as_dict())
        x = torch.randn(1, 3, input_size, input_size)
        with torch.no_grad():
            model(x)
    except Unsupported as exc:
        return CheckResult(f"on {backbone}", SKIP, f"unsupported at {input_size}x{input_size}: {exc}")
    except Exception as exc:
        if failure is not None:
            failure.append(exc)
        site = failure_site(model, exc)
        if site:
            raise ModuleDoesNotFit(f"{site}: {first_line(exc)}") from exc
        raise
    try:
        fc = count_flops(model, x)
    except Exception as exc:
        if hidden:
            return CheckResult(
                f"on {backbone}",
                SKIP,
                f"{where}: runs; MACs not counted because of the unregistered state above ({first_line(exc)})",
            )
        raise
    return CheckResult(
        f"on {backbone}",
        PASS,
        f"{where}: +{attention_parameters(model):,} parameters, "
        f"+{fc.attention:,} MACs in the attached modules at {input_size}x{input_size}",
    )


def run_check(
    target: str,
    backbone: str = "resnet18",
    options: Optional[Dict] = None,
    *,
    channels: int = 64,
    input_size: int = 224,
    timeout: float = CHECK_TIMEOUT_S,
) -> CheckReport:
    """Check ``target`` (a registered name, ``package.module:Class`` or ``path/file.py:Class``) against the
    plugin contract; ``backbone=""`` checks the module alone; ``timeout`` bounds each step (seconds).
    Raises AttnBenchError for what the caller must fix: a target that cannot be loaded, channels or an input
    size that is not a positive integer, an unknown backbone, options the factory does not take."""
    with watching(), _Warnings() as caught, plugin_code(target_roots(target)):
        log = _StateLog()
        token = _STATE.set(log)
        try:
            report = _run_check(target, backbone, dict(options or {}), channels, input_size, timeout)
        finally:
            _STATE.reset(token)
            log.settle("the checks' other work (import, diagnosis)")
    report.results += caught.results() + log.results()
    return report


class _StateLog:
    """Process-wide state (``process_state.SETTINGS``) as the check found it: after each step whatever the
    module changed is put back (the next step, and every later run in this process, see it as before) and
    noted with the first step that changed it; the check then fails ``process`` naming each change."""

    def __init__(self) -> None:
        self.watch = Watch()
        self.seen: Dict[str, Tuple[str, str]] = {}  # setting -> (its first change, the step it was seen after)

    def settle(self, where: str) -> None:
        for name, change in self.watch.check_items():
            self.seen.setdefault(name, (change, where))

    def results(self) -> List[CheckResult]:
        if not self.seen:
            return [
                CheckResult(
                    "process",
                    PASS,
                    "leaves process-wide state alone (threads, dtype, grad mode, hooks, "
                    "working folder, signals, streams ...)",
                )
            ]
        text = "; ".join(f"{change} (in {where})" for change, where in self.seen.values())
        return [
            CheckResult(
                "process",
                FAIL,
                f"changes process-wide state for every later run: {text}; put back after each step",
                "leave global settings alone: scope them inside forward (`with "
                "torch.no_grad():`), never torch.set_num_threads / set_default_dtype / os.chdir / "
                "signal.signal / sys.stdout.close() / global hooks in a module",
            )
        ]


_STATE: ContextVar[Optional[_StateLog]] = ContextVar("attnbench_check_state", default=None)


@contextlib.contextmanager
def _settled(where: str) -> Iterator[None]:
    """After the block (one check step), put back what it changed in process-wide state and note it."""
    try:
        yield
    finally:
        log = _STATE.get()
        if log is not None:
            log.settle(where)


def _run_check(
    target: str, backbone: str, options: Dict, channels: int, input_size: int, timeout: float
) -> CheckReport:

    _usage(channels, input_size, timeout, backbone, options)
    factory, registered = load_factory(target)
    with plugin_code(current_roots() + package_roots(factory)):  # an adapter's own package too
        return _checks(target, factory, registered, backbone, options, channels, input_size, timeout)


def _checks(
    target: str,
    factory: Callable,
    registered: bool,
    backbone: str,
    options: Dict,
    channels: int,
    input_size: int,
    timeout: float,
) -> CheckReport:
    from ..attach.backbone import split_options
    from ..registry import MODULES

    _, module_options = split_options(options)
    report = CheckReport(target, backbone, channels)
    binding = check_binding(factory, channels, module_options, target if registered else "")
    report.results += [binding, _placement_info(factory)]
    if binding.fatal:
        return report  # it cannot be called with a channel count alone: nothing else can run
    try:
        limits = declared_limits(factory)
        if limits != Limits(note=limits.note):
            report.results.append(
                CheckResult(
                    "limits",
                    INFO,
                    ", ".join(
                        f"{k} {getattr(limits, k)}"
                        for k in ("min_spatial", "min_train_batch")
                        if getattr(limits, k) > 1
                    )
                    + (f" ({limits.note})" if limits.note else "")
                    + ": declared; sizes and batches below are skipped",
                )
            )
    except ValueError as exc:
        limits = Limits()
        report.results.append(
            CheckResult(
                "limits",
                FAIL,
                f"malformed declaration: {exc}",
                "declare min_spatial / min_train_batch as positive ints, or drop them",
            )
        )
    steps = _Steps(float(timeout))
    make = _Maker(factory, channels, module_options)
    runs_alone = _module_checks(make, limits, steps, report)
    if not backbone:
        return report
    output = report.get("output")
    if not runs_alone or (output is not None and output.status == FAIL):
        unsupported = report.get("build") is not None and report.get("build").status == SKIP
        report.results.append(
            CheckResult(
                f"on {backbone}",
                SKIP,
                "not attached: unsupported (see build)"
                if unsupported
                else "not attached: its output shares memory, which no ResNet block can add into (see output)"
                if runs_alone
                else "not attached: the module fails alone (above)",
            )
        )
        return report
    name = target if registered else f"check:{getattr(factory, '__name__', target)}"
    if not registered:
        MODULES.register(name, factory, override=True)
    try:
        hidden = report.get("state").status == FAIL
        failure: List[BaseException] = []
        with plugin_code(make.roots):
            result = steps.run(
                f"on {backbone}",
                lambda: check_backbone(name, backbone, options, input_size, hidden, failure),
                scale=BACKBONE_SCALE,
            )
        if result.status == FAIL and not steps.stopped:
            result.advice = site_advice(make, failure[0] if failure else None, steps.timeout)
        report.results.append(result)
    finally:
        if not registered:
            MODULES.unregister(name)
    return report


def site_advice(make: "_Maker", exc: Optional[BaseException], timeout: float) -> str:
    """Why a module that runs alone fails at a site of the backbone, found by running it alone with the site's
    channels at the reference size and with the reference channels at the site's size."""
    from ..attach.backbone import ModuleFailed

    if exc is not None and ALIASED_ADVICE in str(exc):
        return ALIASED_ADVICE
    if isinstance(exc, ModuleFailed) and exc.channels and len(exc.input_shape) == 4:
        channels, size = exc.channels, tuple(exc.input_shape[2:])
        width_ok = _runs(make, channels, make.reference, timeout)
        size_ok = _runs(make, make.channels, size, timeout)
        if not width_ok:
            return f"it runs alone at {make.channels} channels but not at the site's {channels}: {WIDTH_ADVICE}"
        if not size_ok:
            return f"it runs alone at {_size(make.reference)} but not at the site's {_size(size)}: {SIZE_ADVICE}"
        return (
            "it runs alone with the site's channels and size, but not inside the backbone: see the site and the "
            "plugin line named above"
        )
    if isinstance(exc, ModuleDoesNotFit) and "failed to build" in str(exc):
        return f"it builds at {make.channels} channels but not at the site named: {WIDTH_ADVICE}"
    return "see the site and the plugin line named above"


def render_check(report: CheckReport) -> str:
    """The checklist: one line per check, one line of advice under each failure, a summary line."""
    lines = [
        f"attnbench check {report.target}"
        + (f" on {report.backbone}" if report.backbone else "")
        + f" (channels {report.channels})"
    ]
    for r in report.results:
        lines.append(f"  {r.status:<5} {r.name:<14} {r.detail}")
        if r.status == FAIL and r.advice:
            lines.append(f"  {'':<5} {'':<14} fix: {r.advice}")
    counts = {s: sum(r.status == s for r in report.results) for s in (PASS, FAIL, SKIP, INFO)}
    lines.append(
        f"{counts[FAIL]} failed, {counts[PASS]} passed, {counts[SKIP]} skipped, {counts[INFO]} info"
        f" -> exit {report.exit_code}"
    )
    return "\n".join(lines)
