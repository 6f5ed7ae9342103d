"""The schedule and its stop rules: variants alternate call by call in rounds; rounds are added until every
Δ's interval meets its target or the time budget is spent (docs/latency.md)."""

from __future__ import annotations

import gc
import math
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ...core import stats as st
from ...guard.cell import deadline
from .. import contention
from .settings import LatencySettings

HOPELESS_CLEAN = 0.05  # a Δ with fewer undisturbed pairs than this after 3 rounds cannot reach any target here


CONTENDED_CLEAN = 0.5  # a variant with fewer undisturbed calls than this is marked contended


def summarize(times_s: List[float], batch_size: int, threshold: float) -> dict:
    t = np.asarray(times_s) * 1e3
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {
        "median_ms": float(med),
        "iqr_ms": float(q75 - q25),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "runs": int(t.size),
        "images_per_s": float(batch_size * 1e3 / med) if med > 0 else float("nan"),
        "unstable": bool(med > 0 and (q75 - q25) / med > threshold),
    }


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


def run_rounds(
    steps: Dict[str, Callable[[], object]],
    s: LatencySettings,
    dev: torch.device,
    threads: int,
    stop: StopRule,
    round_time: float,
    on_error: Optional[Callable[[str, BaseException], None]] = None,
    check: Optional[Callable[[str, object], None]] = None,
    priority: Optional[dict] = None,
) -> Rounds:
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
                    cur_w[label].append(
                        None
                        if w0 is None or w1 is None or t1 <= t0
                        else round(max(0.0, w1 - w0) / (threads * (t1 - t0)), 4)
                    )
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


def _delta(
    res: Rounds, label: str, baseline: Optional[str], limit: float, batches: int = 1
) -> Optional[st.RatioInterval]:
    if baseline is None or label == baseline or baseline not in res.times:
        return None
    return st.alternating_delta(
        res.times[label], res.times[baseline], res.waits[label], res.waits[baseline], limit, batches=batches
    )


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
    info = {
        **res.machine,
        "wait_median": statistics.median(known) if known else None,
        "clean": clean,
        "nice": res.priority.get("obtained"),
        "nice_granted": bool(res.priority.get("granted")),
    }
    others = res.machine.get("others_cpu")
    info["contended"] = bool(
        (clean is not None and clean < CONTENDED_CLEAN)
        or (clean is None and others is not None and others >= 0.25)
        or (res.machine.get("steal") or 0) >= 0.05
    )
    return info


def _stop_info(res: Rounds, label: str, s: LatencySettings, ci: Optional[st.RatioInterval]) -> dict:
    hw = ci.halfwidth if ci is not None else None
    return {
        "reason": res.reason,
        "target": s.target,
        "max_time": s.time_budget,
        "rounds": len(res.times[label]),
        "seconds": round(res.seconds, 2),
        "halfwidth": None if hw is None else round(hw, 3),
        "met": None if s.target is None or ci is None else bool(hw is not None and hw <= s.target),
    }
