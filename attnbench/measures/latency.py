"""Latency and throughput of a timing group's variants, interleaved call by call, to a stated precision.

Schedule (chosen from measurements on a 2-core VM, see docs/latency.md): after a warm-up,
rounds of cycles; in each cycle every variant runs once, in rotating order (A B C, B C A, ...), so the
calls of a pair lie tens of milliseconds apart and the machine's drift (its speed moved by 10-35%
between minutes here) hits both alike. A round lasts ``min_time`` seconds per variant (at least
``min_iters`` cycles). With ``target`` set, rounds are added until every Δ of the group (vs the
group's baseline) has a 95% half-width of at most ``target`` points, or ``max_time`` seconds of timing
are spent; the record says which (``stats.stop``). Without ``target`` exactly ``rounds`` rounds run.

Hygiene: a fixed thread count; the garbage collector paused while timing (as timeit does); niceness
``nice`` asked for while timing (granted to root or with CAP_SYS_NICE; see ``contention``); each call
tagged with its threads' run-queue wait, so Δs use undisturbed calls only and a contended group is
told apart from a quiet one. Output checked finite after warm-up and after every round.

CPU calls are timed with ``time.perf_counter``, CUDA calls with CUDA events synchronised per call.
A non-eager ``runtime`` is built and checked against eager by ``attnbench.runtimes`` before its warm-up;
that time is reported apart (``prepare_s``). Every raw sample is kept per round (``rounds_ms``, with
``rounds_wait``) so intervals can be recomputed from the record alone (``attnbench.stats``).
"""
from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .. import stats as st
from ..guard import as_unsupported, check_finite, deadline
from ..process_state import unchanged
from ..settings import (BOOLEAN, NONNEGATIVE_INT, POSITIVE_INT, POSITIVE_NUMBER, Rule, choice, optional, suite_field,
                        is_finite_number)
from ..threads import fixed_threads
from . import contention
from .record import Measurement

AMP_NAMES = ("float16", "fp16", "bfloat16", "bf16")  # the names a suite may give (torch dtypes: AMP_DTYPES)
AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
NICE: Rule = (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and -20 <= v <= 19),
              "must be an integer from -20 to 19 (or null: leave the priority as it is)")
FRACTION: Rule = (lambda v: is_finite_number(v) and 0 < v <= 1, "must be a number in (0, 1]")
BATCHES = 5  # batch means per interval (docs/latency.md, "Across runs": chosen from traces of two hosts)
DEFAULT_MAX_TIME = 60.0  # seconds of timing per group when a target is set and max_time is not
HOPELESS_CLEAN = 0.05  # a Δ with fewer undisturbed pairs than this after 3 rounds cannot reach any target here
CONTENDED_CLEAN = 0.5  # a variant with fewer undisturbed calls than this is marked contended


@dataclass(frozen=True)
class LatencySettings:
    batch_size: int = 1
    input_size: tuple = (224, 224)
    in_chans: int = 3
    # Suite-settable (the suite's `latency:` mapping): keys, defaults and checks are these fields.
    threads: Optional[int] = suite_field(None, optional(POSITIVE_INT))  # CPU threads; None = torch's current setting
    warmup: int = suite_field(5, NONNEGATIVE_INT)
    rounds: int = suite_field(5, POSITIVE_INT)  # rounds at least (exactly, without a target)
    min_time: float = suite_field(0.3, POSITIVE_NUMBER)  # seconds per variant per round
    min_iters: int = suite_field(3, POSITIVE_INT)  # cycles per round at least
    batches: int = suite_field(BATCHES, POSITIVE_INT)  # intervals over this many batch means of consecutive rounds (1: over rounds)
    target: Optional[float] = suite_field(None, optional(POSITIVE_NUMBER))  # 95% half-width of every Δ, in points
    max_time: Optional[float] = suite_field(None, optional(POSITIVE_NUMBER))  # seconds of timing per group
    direct_target: float = suite_field(5.0, POSITIVE_NUMBER)  # attention_cpu: 95% half-width of each total, % of itself
    nice: Optional[int] = suite_field(-20, NICE)  # niceness asked for while timing (granted to root / CAP_SYS_NICE)
    clean_wait: float = suite_field(st.CLEAN_WAIT, FRACTION)  # run-queue wait share above which a call is disturbed
    unstable_threshold: float = suite_field(0.10, POSITIVE_NUMBER)
    amp: Optional[str] = suite_field(None, choice(None, *AMP_NAMES))  # "fp16" / "bf16" autocast
    channels_last: bool = suite_field(False, BOOLEAN)
    runtime: str = "eager"  # a suite axis, not a latency key: eager, compile, onnxruntime, openvino (attnbench.runtimes)
    train: bool = False  # time a full training step (forward, backward, SGD step) instead
    timeout: Optional[float] = None  # seconds one model's warm-up or one call may take (a hung module fails alone)

    @property
    def time_budget(self) -> Optional[float]:
        return self.max_time if self.max_time is not None else (DEFAULT_MAX_TIME if self.target is not None else None)

    def as_dict(self) -> dict:
        return {
            "batch_size": self.batch_size, "input_size": list(self.input_size), "threads": self.threads,
            "warmup": self.warmup, "rounds": self.rounds, "min_time": self.min_time, "min_iters": self.min_iters,
            "target": self.target, "direct_target": self.direct_target, "max_time": self.time_budget, "nice": self.nice, "clean_wait": self.clean_wait,
            "amp": self.amp, "channels_last": self.channels_last, "runtime": self.runtime,
            "mode": "train" if self.train else "eval", "schedule": "alternating", "batches": self.batches,
        }


def summarize(times_s: List[float], batch_size: int, threshold: float) -> dict:
    t = np.asarray(times_s) * 1e3
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {
        "median_ms": float(med), "iqr_ms": float(q75 - q25), "mean_ms": float(t.mean()), "min_ms": float(t.min()),
        "runs": int(t.size), "images_per_s": float(batch_size * 1e3 / med) if med > 0 else float("nan"),
        "unstable": bool(med > 0 and (q75 - q25) / med > threshold),
    }


class _Step:
    """One timed call of a model: inference forward, or a whole training step."""

    def __init__(self, model: nn.Module, x: torch.Tensor, s: LatencySettings, device: torch.device,
                 forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.model, self.x, self.train = model, x, s.train
        self.forward = forward or model  # a compiled forward for runtime compile; the optimizer steps model's parameters
        self.amp = AMP_DTYPES.get(s.amp) if s.amp else None
        self.device = device
        if s.train:
            self.target = torch.zeros(x.shape[0], dtype=torch.long, device=device)
            self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def __call__(self):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            if not self.train:
                with torch.inference_mode():
                    return self.forward(self.x)
            self.opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.forward(self.x), self.target)
        loss.backward()
        self.opt.step()
        return loss.detach()


@dataclass
class Rounds:
    """What the interleaved schedule gathered: seconds and run-queue wait shares per call, per round."""

    times: Dict[str, List[List[float]]]
    waits: Dict[str, List[List[Optional[float]]]]
    reason: str = ""
    seconds: float = 0.0
    machine: Dict[str, Optional[float]] = field(default_factory=dict)
    priority: Dict[str, object] = field(default_factory=dict)
    group: str = ""

    def ms(self, label: str) -> List[List[float]]:
        return [[t * 1e3 for t in r] for r in self.times[label]]


StopRule = Callable[[Rounds, int, float], Optional[str]]


def run_rounds(steps: Dict[str, Callable[[], object]], s: LatencySettings, dev: torch.device, threads: int,
               stop: StopRule, round_time: float, on_error: Optional[Callable[[str, BaseException], None]] = None,
               check: Optional[Callable[[str, object], None]] = None, priority: Optional[dict] = None) -> Rounds:
    """Rounds of cycles in rotating order until ``stop`` names a reason. A step that raises is reported
    through ``on_error`` and dropped, and the cycle it broke is dropped for everyone (pairs stay aligned).
    ``check(label, last_output)`` runs after every round, outside the timing. ``priority`` is what the
    caller's ``contention.raised_priority`` obtained (recorded with the result)."""
    order = list(steps)
    res = Rounds({k: [] for k in order}, {k: [] for k in order}, group=uuid.uuid4().hex[:12])
    waits = contention.ThreadWait()
    cuda = dev.type == "cuda"
    cycle = 0
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        # (the caller holds the priority: build, warm-up and rounds alike)
        res.priority = dict(priority or {})
        waits.refresh()  # a runtime's pool exists by now
        start_state = contention.sample()
        t_start = time.perf_counter()
        r = 0
        while order:
            cur_t = {k: [] for k in order}
            cur_w = {k: [] for k in order}
            last: Dict[str, object] = {}
            round_end = time.perf_counter() + round_time
            n_cycles = 0
            while order and (n_cycles < s.min_iters or time.perf_counter() < round_end):
                k = cycle % len(order)
                cycle += 1
                failed = None
                for label in order[k:] + order[:k]:
                    try:
                        with deadline(s.timeout, f"timing of {label}"):
                            w0 = waits.read()
                            if cuda:
                                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                                t0 = time.perf_counter()
                                a.record()
                                last[label] = steps[label]()
                                b.record()
                                torch.cuda.synchronize(dev)
                                t1 = time.perf_counter()
                                dt = a.elapsed_time(b) / 1e3
                            else:
                                t0 = time.perf_counter()
                                last[label] = steps[label]()
                                t1 = time.perf_counter()
                                dt = t1 - t0
                            w1 = waits.read()
                    except Exception as exc:
                        if on_error is None:
                            raise
                        on_error(label, exc)
                        failed = label
                        break
                    cur_t[label].append(dt)
                    cur_w[label].append(None if w0 is None or w1 is None or t1 <= t0 else
                                        round(max(0.0, w1 - w0) / (threads * (t1 - t0)), 4))
                if failed is not None:  # drop the broken cycle for everyone, and the failed step for good
                    order.remove(failed)
                    n = min((len(cur_t[k2]) for k2 in order), default=0)
                    for k2 in order:
                        del cur_t[k2][n:], cur_w[k2][n:]
                    cur_t.pop(failed), cur_w.pop(failed), last.pop(failed, None)
                    res.times.pop(failed), res.waits.pop(failed)
                    continue
                n_cycles += 1
            for label in list(order):
                try:
                    if check is not None and label in last:
                        check(label, last[label])
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(label, exc)
                    order.remove(label)
                    res.times.pop(label), res.waits.pop(label)
                    continue
                res.times[label].append(cur_t[label])
                res.waits[label].append(cur_w[label])
            r += 1
            res.seconds = time.perf_counter() - t_start
            reason = stop(res, r, res.seconds) if order else "every variant failed"
            if reason:
                res.reason = reason
                break
        res.machine = contention.machine_state(start_state, contention.sample())
    finally:
        if gc_was:
            gc.enable()
    return res


def _delta(res: Rounds, label: str, baseline: Optional[str], limit: float, batches: int = 1) -> Optional[st.RatioInterval]:
    if baseline is None or label == baseline or baseline not in res.times:
        return None
    return st.alternating_delta(res.times[label], res.times[baseline], res.waits[label], res.waits[baseline], limit,
                                batches=batches)


def precision_rule(s: LatencySettings, baseline: Optional[str]) -> StopRule:
    """Stop after ``rounds`` rounds without a target; with one, when every Δ vs ``baseline`` (or, without
    a baseline in the group, every variant's own per-round median) is within ``target`` points, or the
    time budget is spent, or no variant can be measured undisturbed (contended)."""
    budget = s.time_budget

    def widths(res: Rounds, r: int) -> Dict[str, Optional[float]]:
        out = {}
        for label in res.times:
            if baseline in res.times and label == baseline:
                continue
            if baseline in res.times:
                ci = _delta(res, label, baseline, s.clean_wait, s.batches)
                hopeless = r >= 3 and (ci is None or ci.clean is None or ci.clean < HOPELESS_CLEAN)
                out[label] = math.inf if hopeless else (ci.halfwidth if ci is not None else None)
            else:
                out[label] = st.own_precision(res.times[label], res.waits[label], s.clean_wait, batches=s.batches)
        return out

    def stop(res: Rounds, r: int, elapsed: float) -> Optional[str]:
        if s.target is None:
            if r >= s.rounds:
                return "rounds"
            return "max_time" if budget is not None and elapsed >= budget else None
        w = widths(res, r)
        if w and r >= 3 and all(v == math.inf for v in w.values()):
            return "contended"
        if r >= s.rounds and all(v is not None and v <= s.target for v in w.values() if v != math.inf):
            return "contended" if any(v == math.inf for v in w.values()) else "target met"
        if budget is not None and elapsed >= budget:
            return "max_time"
        return None

    return stop


def _contention(res: Rounds, keys: List[str], limit: float) -> dict:
    """What the machine was doing while ``keys`` (a variant, or all sites of one) were timed, and whether
    that makes their row contended (the rule docs/latency.md states)."""
    known = [w for k in keys for rnd in res.waits[k] for w in rnd if w is not None]
    clean = sum(1 for w in known if w <= limit) / len(known) if known else None
    info = {**res.machine, "wait_median": statistics.median(known) if known else None, "clean": clean,
            "nice": res.priority.get("obtained"), "nice_granted": bool(res.priority.get("granted"))}
    others = res.machine.get("others_cpu")
    info["contended"] = bool((clean is not None and clean < CONTENDED_CLEAN) or
                             (clean is None and others is not None and others >= 0.25) or
                             (res.machine.get("steal") or 0) >= 0.05)
    return info


def _stop_info(res: Rounds, label: str, s: LatencySettings, ci: Optional[st.RatioInterval]) -> dict:
    hw = ci.halfwidth if ci is not None else None
    return {"reason": res.reason, "target": s.target, "max_time": s.time_budget, "rounds": len(res.times[label]),
            "seconds": round(res.seconds, 2), "halfwidth": None if hw is None else round(hw, 3),
            "met": None if s.target is None or ci is None else bool(hw is not None and hw <= s.target)}


def measure_latency(
    models: Dict[str, nn.Module], settings: LatencySettings, device: str = "cpu",
    on_error: Optional[Callable[[str, BaseException], None]] = None, baseline: Optional[str] = None,
) -> Dict[str, Measurement]:
    """Time every model under one interleaved schedule (see the module docstring); ``baseline`` is the
    label every Δ is taken against (the stop rule's reference). One that fails is reported via
    ``on_error(label, exc)`` and dropped, the others go on."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device available")
    mem_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    steps: Dict[str, Callable] = {}
    prepared: Dict[str, dict] = {}  # export/compile time and runtime details, per label
    # The priority covers preparation and warm-up too: on a loaded machine they would otherwise crawl.
    with fixed_threads(settings.threads) as threads, contention.raised_priority(settings.nice) as prio, \
            _cudnn_benchmark(cuda):
        torch.manual_seed(0)
        x = torch.randn(settings.batch_size, settings.in_chans, *settings.input_size, device=dev)
        x = x.contiguous(memory_format=mem_format)
        for label, model in models.items():
            try:
                model = model.to(dev, memory_format=mem_format).train(settings.train)
                # a module that changes process-wide state (threads, dtype, hooks ...) on its first calls fails
                # here, alone, with the state put back: the other variants are timed as if it never ran
                with unchanged(_who(model, label)), deadline(settings.timeout, f"warm-up of {label}"):
                    step, prepared[label] = _make_step(model, x, settings, dev, threads)
                    for _ in range(max(1, settings.warmup)):
                        out = step()
                    if cuda:
                        torch.cuda.synchronize(dev)
                check_finite(out, label)  # a NaN model is never timed as if it worked
                steps[label] = step
            except Exception as exc:
                exc = as_unsupported(exc, settings.batch_size, settings.input_size)
                if on_error is None:
                    raise exc
                on_error(label, exc)
        if not steps:
            return {}
        res = run_rounds(steps, settings, dev, threads, precision_rule(settings, baseline if baseline in steps else None),
                         settings.min_time * len(steps), on_error,
                         check=lambda label, out: check_finite(out, f"{label} (after warm-up, while timing)"), priority=prio)
    metric = ("train_step_" if settings.train else "latency_") + ("gpu" if cuda else "cpu")
    method = ("CUDA events, synchronised per call" if cuda else "time.perf_counter per call") + \
        ", variants interleaved call by call, " + ("SGD training step" if settings.train else "eval, inference_mode") + \
        ("" if settings.runtime == "eager" else f", runtime {settings.runtime}")
    out = {}
    for label in res.times:
        rounds = res.times[label]
        stats = summarize([t for block in rounds for t in block], settings.batch_size, settings.unstable_threshold)
        # Every raw sample, per round (ms), and each call's run-queue wait share: every Δ interval and
        # compare's noise band are computed from these.
        stats["rounds_ms"] = [[round(t * 1e3, 5) for t in block] for block in rounds]
        if any(w is not None for rnd in res.waits[label] for w in rnd):
            stats["rounds_wait"] = res.waits[label]
        stats["schedule"] = "alternating"
        stats["batches"] = settings.batches  # the interval's batch means (stats.batch_interval): read back by the tables
        stats["group"] = res.group
        stats["baseline"] = baseline if baseline in res.times else None
        ci = _delta(res, label, stats["baseline"], settings.clean_wait)
        stats["stop"] = _stop_info(res, label, settings, ci)
        stats["contention"] = _contention(res, [label], settings.clean_wait)
        stats.update(prepared.get(label) or {})
        out[label] = Measurement(metric, stats["median_ms"], "ms", method,
                                 dict(settings.as_dict(), threads=threads, device=str(dev)), stats)
    return out


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN picks its fastest kernels for the timed shapes (CUDA timings), and the setting is put back after."""
    saved = torch.backends.cudnn.benchmark
    if on:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _who(model: nn.Module, label: str) -> str:
    """The module a variant attaches ('module 'se' (variant se-r8)'), for a process-state failure."""
    module = getattr(getattr(model, "attnbench_attachment", None), "module", None)
    return f"module {module!r} (variant {label!r})" if module and module != label else f"module {label!r}"


def _make_step(model: nn.Module, x: torch.Tensor, s: LatencySettings, dev: torch.device, threads: int):
    """The timed call and what preparing it took: eager (and training steps) run ``_Step``; other
    runtimes are built by attnbench.runtimes, which checks their output against eager first."""
    if s.runtime == "eager":
        return _Step(model, x, s, dev), {}
    from .. import runtimes

    if s.train:  # training steps: eager or torch.compile only (suite planning keeps the rest out)
        if s.runtime != "compile":
            raise ValueError(f"runtime {s.runtime} cannot time a training step")
        t0 = time.perf_counter()
        step = _Step(model, x, s, dev, forward=runtimes.compile_model(model))
        step()
        return step, {"prepare_s": time.perf_counter() - t0, "runtime_info": {
            "runtime": "compile", "backend": runtimes.COMPILE_BACKEND, "mode": runtimes.COMPILE_MODE}}
    p = runtimes.prepare(s.runtime, model, x, threads, str(dev))
    return p.step, {"prepare_s": p.prepare_s, "runtime_info": p.info}


# --- Direct attribution: the attention modules alone -----------------------------------------------

def capture_sites(model: nn.Module, x: torch.Tensor) -> List[tuple]:
    """(slot, the input it sees) for every attached module, from one eval forward of the model."""
    from ..attach import AttentionSlot

    slots = [m for m in model.modules() if isinstance(m, AttentionSlot)]
    seen: Dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: seen.setdefault(i, args[0].detach().clone()))
             for i, m in enumerate(slots)]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [(m, seen[i]) for i, m in enumerate(slots) if i in seen]


def _call_module(module: nn.Module, x: torch.Tensor):
    with torch.inference_mode():
        return module(x)


def _site_totals(res: Rounds, keys: List[str], limit: float) -> List[float]:
    """Per round, the sum over sites of each site's median undisturbed call (rounds missing a site are left out)."""
    totals = []
    for r in range(min((len(res.times[k]) for k in keys), default=0)):
        meds = []
        for k in keys:
            flags = st.clean_calls(res.times[k][r], res.waits[k][r], limit)
            kept = [t for t, ok in zip(res.times[k][r], flags) if ok]
            if not kept:
                break
            meds.append(statistics.median(kept) * 1e3)
        else:
            totals.append(sum(meds))
    return totals


def measure_sites(models: Dict[str, nn.Module], settings: LatencySettings,
                  on_error: Optional[Callable[[str, BaseException], None]] = None) -> Dict[str, Measurement]:
    """Direct attribution: every attached module timed alone on the input it sees in the model (captured
    from one forward), all sites of all variants interleaved call by call like the networks. Per variant:
    'added ms (direct)' = the sum over its sites, with a t interval over rounds, and the same per stage.
    With ``target`` set, rounds are added until each variant's total is known within ``direct_target`` % of itself."""
    dev = torch.device("cpu")
    site_steps: Dict[str, Callable] = {}
    meta: Dict[str, List[dict]] = {}
    with fixed_threads(settings.threads) as threads, contention.raised_priority(settings.nice) as prio:
        torch.manual_seed(0)
        x = torch.randn(settings.batch_size, settings.in_chans, *settings.input_size)
        for label, model in models.items():
            try:
                with unchanged(_who(model, label)), deadline(settings.timeout, f"capturing the sites of {label}"):
                    sites = capture_sites(model, x)
                    meta[label] = []
                    for i, (slot, inp) in enumerate(sites):
                        key = f"{label}\t{i}"
                        site_steps[key] = partial(_call_module, slot.attn.eval(), inp)
                        for _ in range(max(1, settings.warmup)):
                            check_finite(site_steps[key](), f"{label} at {slot.site}")
                        meta[label].append({"key": key, "path": slot.site, "stage": int(getattr(slot, "stage", 0) or 0),
                                            "shape": list(inp.shape)})
            except Exception as exc:
                meta.pop(label, None)
                if on_error is None:
                    raise
                on_error(label, exc)
        owner = {m["key"]: label for label, ms in meta.items() for m in ms}

        def site_error(key: str, exc: BaseException) -> None:
            label = owner[key]
            if label in meta:
                meta.pop(label)
                if on_error is None:
                    raise exc
                on_error(label, exc)

        def stop(res: Rounds, r: int, elapsed: float) -> Optional[str]:
            if settings.target is None:
                return "rounds" if r >= settings.rounds else None
            widths = []  # relative half-widths (% of each variant's own total): direct_target
            for label, ms in meta.items():
                keys = [m["key"] for m in ms if m["key"] in res.times]
                mean, lo, hi = st.mean_interval(_site_totals(res, keys, settings.clean_wait), batches=settings.batches)
                widths.append(None if lo is None or not mean else 100 * (hi - mean) / mean)
            if r >= settings.rounds and all(w is not None and w <= settings.direct_target for w in widths):
                return "target met"
            budget = settings.time_budget
            return "max_time" if budget is not None and elapsed >= budget else None

        res = run_rounds(site_steps, settings, dev, threads, stop, settings.min_time * max(1, len(meta)), site_error,
                         priority=prio) \
            if site_steps else Rounds({}, {}, reason="no sites", group=uuid.uuid4().hex[:12])
    out = {}
    for label, ms in meta.items():
        keys = [m["key"] for m in ms if m["key"] in res.times]
        totals = _site_totals(res, keys, settings.clean_wait)
        # No round in which every site had an undisturbed call: the totals of all calls, marked contended below.
        limit = settings.clean_wait if totals or not keys else math.inf
        if not totals:
            totals = _site_totals(res, keys, limit)
        mean, lo, hi = st.mean_interval(totals, batches=settings.batches) if ms else (0.0, None, None)
        stages: Dict[str, dict] = {}
        for stage in sorted({m["stage"] for m in ms}):
            skeys = [m["key"] for m in ms if m["stage"] == stage and m["key"] in res.times]
            s_mean, s_lo, s_hi = st.mean_interval(_site_totals(res, skeys, limit), batches=settings.batches)
            stages[str(stage)] = {"ms": s_mean, "low_ms": s_lo, "high_ms": s_hi, "sites": len(skeys)}
        sites = []
        for m in ms:
            calls = [t * 1e3 for rnd in res.times.get(m["key"], []) for t in rnd]
            sites.append({"path": m["path"], "stage": m["stage"], "shape": m["shape"],
                          "median_ms": round(statistics.median(calls), 5) if calls else None, "calls": len(calls)})
        stats = {"total_ms": mean, "low_ms": lo, "high_ms": hi, "rounds_total_ms": [round(t, 5) for t in totals],
                 "stages": stages, "sites": sites, "schedule": "alternating", "batches": settings.batches, "group": res.group,
                 "stop": {"reason": res.reason, "target": settings.direct_target if settings.target is not None else None,
                          "max_time": settings.time_budget,
                          "rounds": len(totals), "seconds": round(res.seconds, 2),
                          "halfwidth_pct": None if lo is None or not mean else round(100 * (hi - mean) / mean, 3)},
                 "contention": _contention(res, keys, settings.clean_wait)}
        # totals taken from disturbed calls too (no round had every site undisturbed) are contended
        stats["contention"]["contended"] = stats["contention"]["contended"] or limit == math.inf
        if mean is None:
            raise_later = RuntimeError(f"{label}: no round timed every site of it; raise max_time")
            if on_error is None:
                raise raise_later
            on_error(label, raise_later)
            continue
        method = ("each attached module alone on the input it sees in the model, all sites interleaved call by call; "
                  "sum over sites of per-round medians, t interval over rounds")
        out[label] = Measurement("attention_cpu", float(mean or 0.0), "ms", method,
                                 dict(settings.as_dict(), threads=threads, device="cpu"), stats)
    return out


def measure_peak_memory(model: nn.Module, settings: LatencySettings, device: str = "cuda") -> Measurement:
    """Peak CUDA memory of one forward (or training step) after a warm-up, in MiB."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("peak memory needs a CUDA device")
    mem_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=mem_format).train(settings.train)
    x = torch.randn(settings.batch_size, settings.in_chans, *settings.input_size, device=dev).contiguous(memory_format=mem_format)
    step = _Step(model, x, settings, dev)
    step()
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    step()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return Measurement("memory_gpu", peak / 2**20, "MiB", "torch.cuda.max_memory_allocated over one call",
                       dict(settings.as_dict(), device=str(dev)), {"peak_bytes": int(peak), "resident_bytes": int(base)})
