"""Latency and throughput, interleaved across variants so drift hits them all alike.

CPU: ``time.perf_counter`` around each forward, eval mode, ``torch.inference_mode()``, a fixed
thread count, warm-up, then ``rounds`` rounds in which every model runs for ``min_time``
seconds (at least ``min_iters`` calls) in rotating order: A B C, B C A, ... .
CUDA: the same schedule timed with CUDA events, synchronised at each block's ends, with
``cudnn.benchmark`` and optional AMP and channels_last. A non-eager ``runtime`` (torch.compile,
ONNX Runtime, OpenVINO) is built and checked against eager by ``attnbench.runtimes`` before its warm-up;
the time that takes is reported apart (``prepare_s``), never inside the latency.
Every raw sample is kept per round (``rounds_ms``) for the paired Δ interval.
Each result carries median, IQR, runs and an ``unstable`` flag when IQR/median exceeds
``unstable_threshold`` (0.10: the rule behind torch.utils.benchmark's "Interquartile range is ...% of
the median" warning; pyperf judges stability by standard deviation/mean instead).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..guard import check_finite, deadline
from ..settings import BOOLEAN, NONNEGATIVE_INT, POSITIVE_INT, POSITIVE_NUMBER, choice, optional, suite_field
from ..threads import fixed_threads
from .record import Measurement

AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LatencySettings:
    batch_size: int = 1
    input_size: tuple = (224, 224)
    in_chans: int = 3
    # Suite-settable (the suite's `latency:` mapping): keys, defaults and checks are these fields.
    threads: Optional[int] = suite_field(None, optional(POSITIVE_INT))  # CPU threads; None = torch's current setting
    warmup: int = suite_field(5, NONNEGATIVE_INT)
    rounds: int = suite_field(5, POSITIVE_INT)
    min_time: float = suite_field(0.3, POSITIVE_NUMBER)  # seconds per model per round
    min_iters: int = suite_field(3, POSITIVE_INT)
    unstable_threshold: float = suite_field(0.10, POSITIVE_NUMBER)
    amp: Optional[str] = suite_field(None, choice(None, *AMP_DTYPES))  # "fp16" / "bf16" autocast
    channels_last: bool = suite_field(False, BOOLEAN)
    runtime: str = "eager"  # a suite axis, not a latency key: eager, compile, onnxruntime, openvino (attnbench.runtimes)
    train: bool = False  # time a full training step (forward, backward, SGD step) instead
    timeout: Optional[float] = None  # seconds one model's warm-up or timing block may take (a hung module fails alone)

    def as_dict(self) -> dict:
        return {
            "batch_size": self.batch_size, "input_size": list(self.input_size), "threads": self.threads,
            "warmup": self.warmup, "rounds": self.rounds, "min_time": self.min_time, "amp": self.amp,
            "channels_last": self.channels_last, "runtime": self.runtime, "mode": "train" if self.train else "eval",
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


def measure_latency(
    models: Dict[str, nn.Module], settings: LatencySettings, device: str = "cpu",
    on_error: Optional[Callable[[str, BaseException], None]] = None,
) -> Dict[str, Measurement]:
    """Time every model under the same interleaved schedule; one that fails is reported via
    ``on_error(label, exc)`` and dropped, the others go on."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device available")
    if cuda:
        torch.backends.cudnn.benchmark = True
    mem_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    steps: Dict[str, Callable] = {}
    prepared: Dict[str, dict] = {}  # export/compile time and runtime details, per label
    with fixed_threads(settings.threads) as threads:
        torch.manual_seed(0)
        x = torch.randn(settings.batch_size, settings.in_chans, *settings.input_size, device=dev)
        x = x.contiguous(memory_format=mem_format)
        for label, model in models.items():
            try:
                model = model.to(dev, memory_format=mem_format).train(settings.train)
                with deadline(settings.timeout, f"warm-up of {label}"):
                    step, prepared[label] = _make_step(model, x, settings, dev, threads)
                    for _ in range(max(1, settings.warmup)):
                        out = step()
                    if cuda:
                        torch.cuda.synchronize(dev)
                check_finite(out, label)  # a NaN model is never timed as if it worked
                steps[label] = step
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(label, exc)
        times: Dict[str, List[List[float]]] = {label: [] for label in steps}  # per round, every call
        order = list(steps)
        for r in range(settings.rounds):
            k = r % len(order) if order else 0
            for label in order[k:] + order[:k]:
                try:
                    with deadline(settings.timeout, f"timing of {label}"):
                        times[label].append(_time_block(steps[label], settings, dev))
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(label, exc)
                    order.remove(label)
                    times.pop(label, None)
                    break  # the rotation list changed; the next round starts afresh
        metric = ("train_step_" if settings.train else "latency_") + ("gpu" if cuda else "cpu")
        method = ("CUDA events, synchronised" if cuda else "time.perf_counter per call") + \
            f", {settings.rounds} interleaved rounds, " + ("SGD training step" if settings.train else "eval, inference_mode") + \
            ("" if settings.runtime == "eager" else f", runtime {settings.runtime}")
        out = {}
        for label, rounds in times.items():
            stats = summarize([t for block in rounds for t in block], settings.batch_size, settings.unstable_threshold)
            # Every raw sample, per round (ms): the paired Δ interval and compare's noise band are computed from these.
            stats["rounds_ms"] = [[round(t * 1e3, 5) for t in block] for block in rounds]
            stats.update(prepared.get(label) or {})
            out[label] = Measurement(metric, stats["median_ms"], "ms", method,
                                     dict(settings.as_dict(), threads=threads, device=str(dev)), stats)
        return out


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


def _time_block(step: _Step, s: LatencySettings, dev: torch.device) -> List[float]:
    if dev.type == "cuda":
        pairs = []
        torch.cuda.synchronize(dev)
        deadline = time.perf_counter() + s.min_time
        while len(pairs) < s.min_iters or time.perf_counter() < deadline:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            pairs.append((start, end))
            if len(pairs) % 16 == 0:
                torch.cuda.synchronize(dev)  # keep the deadline honest: the queue must not run ahead
        torch.cuda.synchronize(dev)
        return [a.elapsed_time(b) / 1e3 for a, b in pairs]
    out = []
    deadline = time.perf_counter() + s.min_time
    while len(out) < s.min_iters or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
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
