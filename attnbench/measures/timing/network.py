"""Whole-network latency: the variants of one timing group, built, warmed and timed on the schedule; peak memory."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ...guard.cell import as_unsupported, deadline, require_finite
from ...guard.process_state import unchanged
from ...guard.threads import fixed_threads
from ...records.measurement import Measurement
from .. import contention
from .schedule import _contention, _delta, _stop_info, precision_rule, run_rounds, summarize
from .settings import LatencySettings

AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class _Step:
    """One timed call of a model: inference forward, or a whole training step."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        s: LatencySettings,
        device: torch.device,
        forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        self.model, self.x, self.train = model, x, s.train
        self.forward = (
            forward or model
        )  # a compiled forward for runtime compile; the optimizer steps model's parameters
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


def measure_latency(
    models: Dict[str, nn.Module],
    settings: LatencySettings,
    device: str = "cpu",
    on_error: Optional[Callable[[str, BaseException], None]] = None,
    baseline: Optional[str] = None,
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
    with (
        fixed_threads(settings.threads) as threads,
        contention.raised_priority(settings.nice) as prio,
        _cudnn_benchmark(cuda),
    ):
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
                require_finite(out, label)  # a NaN model is never timed as if it worked
                steps[label] = step
            except Exception as exc:
                exc = as_unsupported(exc, settings.batch_size, settings.input_size)
                if on_error is None:
                    raise exc
                on_error(label, exc)
        if not steps:
            return {}
        res = run_rounds(
            steps,
            settings,
            dev,
            threads,
            precision_rule(settings, baseline if baseline in steps else None),
            settings.min_time * len(steps),
            on_error,
            check=lambda label, out: require_finite(out, f"{label} (after warm-up, while timing)"),
            priority=prio,
        )
    metric = ("train_step_" if settings.train else "latency_") + ("gpu" if cuda else "cpu")
    method = (
        ("CUDA events, synchronised per call" if cuda else "time.perf_counter per call")
        + ", variants interleaved call by call, "
        + ("SGD training step" if settings.train else "eval, inference_mode")
        + ("" if settings.runtime == "eager" else f", runtime {settings.runtime}")
    )
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
        stats["batches"] = (
            settings.batches
        )  # the interval's batch means (stats.batch_interval): read back by the tables
        stats["group"] = res.group
        stats["baseline"] = baseline if baseline in res.times else None
        ci = _delta(
            res, label, stats["baseline"], settings.clean_wait, settings.batches
        )  # as the stop rule and the table
        stats["stop"] = _stop_info(res, label, settings, ci)
        stats["contention"] = _contention(res, [label], settings.clean_wait)
        stats.update(prepared.get(label) or {})
        out[label] = Measurement(
            metric, stats["median_ms"], "ms", method, dict(settings.as_dict(), threads=threads, device=str(dev)), stats
        )
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
    runtimes are built by attnbench.measures.runtimes, which checks their output against eager first."""
    if s.runtime == "eager":
        return _Step(model, x, s, dev), {}
    from .. import runtimes

    if s.train:  # training steps: eager or torch.compile only (suite planning keeps the rest out)
        if s.runtime != "compile":
            raise ValueError(f"runtime {s.runtime} cannot time a training step")
        t0 = time.perf_counter()
        step = _Step(model, x, s, dev, forward=runtimes.compile_model(model))
        step()
        return step, {
            "prepare_s": time.perf_counter() - t0,
            "runtime_info": {"runtime": "compile", "backend": runtimes.COMPILE_BACKEND, "mode": runtimes.COMPILE_MODE},
        }
    p = runtimes.prepare(s.runtime, model, x, threads, str(dev))
    return p.step, {"prepare_s": p.prepare_s, "runtime_info": p.info}


def measure_peak_memory(model: nn.Module, settings: LatencySettings, device: str = "cuda") -> Measurement:
    """Peak CUDA memory of one forward (or training step) after a warm-up, in MiB."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("peak memory needs a CUDA device")
    mem_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=mem_format).train(settings.train)
    x = torch.randn(settings.batch_size, settings.in_chans, *settings.input_size, device=dev).contiguous(
        memory_format=mem_format
    )
    step = _Step(model, x, settings, dev)
    step()
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    step()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return Measurement(
        "memory_gpu",
        peak / 2**20,
        "MiB",
        "torch.cuda.max_memory_allocated over one call",
        dict(settings.as_dict(), device=str(dev)),
        {"peak_bytes": int(peak), "resident_bytes": int(base)},
    )
