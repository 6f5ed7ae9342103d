"""Each attention module timed alone, on the very inputs it sees inside the network (``attention_cpu``)."""

from __future__ import annotations

import math
import statistics
import uuid
from functools import partial
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ...core import stats as st
from ...guard.cell import deadline, require_finite
from ...guard.process_state import unchanged
from ...guard.threads import fixed_threads
from ...records.measurement import Measurement
from .. import contention
from .network import _who
from .schedule import Rounds, _contention, run_rounds
from .settings import LatencySettings


def capture_sites(model: nn.Module, x: torch.Tensor) -> List[tuple]:
    """(slot, the input it sees) for every attached module, from one eval forward of the model."""
    from ...attach.backbone import AttentionSlot

    slots = [m for m in model.modules() if isinstance(m, AttentionSlot)]
    seen: Dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: seen.setdefault(i, args[0].detach().clone()))
        for i, m in enumerate(slots)
    ]
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


def measure_sites(
    models: Dict[str, nn.Module],
    settings: LatencySettings,
    on_error: Optional[Callable[[str, BaseException], None]] = None,
) -> Dict[str, Measurement]:
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
                            require_finite(site_steps[key](), f"{label} at {slot.site}")
                        meta[label].append(
                            {
                                "key": key,
                                "path": slot.site,
                                "stage": int(getattr(slot, "stage", 0) or 0),
                                "shape": list(inp.shape),
                            }
                        )
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
            for ms in meta.values():
                keys = [m["key"] for m in ms if m["key"] in res.times]
                mean, lo, hi = st.mean_interval(_site_totals(res, keys, settings.clean_wait), batches=settings.batches)
                widths.append(None if lo is None or not mean else 100 * (hi - mean) / mean)
            if r >= settings.rounds and all(w is not None and w <= settings.direct_target for w in widths):
                return "target met"
            budget = settings.time_budget
            return "max_time" if budget is not None and elapsed >= budget else None

        res = (
            run_rounds(
                site_steps,
                settings,
                dev,
                threads,
                stop,
                settings.min_time * max(1, len(meta)),
                site_error,
                priority=prio,
            )
            if site_steps
            else Rounds({}, {}, reason="no sites", group=uuid.uuid4().hex[:12])
        )
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
            sites.append(
                {
                    "path": m["path"],
                    "stage": m["stage"],
                    "shape": m["shape"],
                    "median_ms": round(statistics.median(calls), 5) if calls else None,
                    "calls": len(calls),
                }
            )
        stats = {
            "total_ms": mean,
            "low_ms": lo,
            "high_ms": hi,
            "rounds_total_ms": [round(t, 5) for t in totals],
            "stages": stages,
            "sites": sites,
            "schedule": "alternating",
            "batches": settings.batches,
            "group": res.group,
            "stop": {
                "reason": res.reason,
                "target": settings.direct_target if settings.target is not None else None,
                "max_time": settings.time_budget,
                "rounds": len(totals),
                "seconds": round(res.seconds, 2),
                "halfwidth_pct": None if lo is None or not mean else round(100 * (hi - mean) / mean, 3),
            },
            "contention": _contention(res, keys, settings.clean_wait),
        }
        # totals taken from disturbed calls too (no round had every site undisturbed) are contended
        stats["contention"]["contended"] = stats["contention"]["contended"] or limit == math.inf
        if mean is None:
            raise_later = RuntimeError(f"{label}: no round timed every site of it; raise max_time")
            if on_error is None:
                raise raise_later
            on_error(label, raise_later)
            continue
        method = (
            "each attached module alone on the input it sees in the model, all sites interleaved call by call; "
            "sum over sites of per-round medians, t interval over rounds"
        )
        out[label] = Measurement(
            "attention_cpu",
            float(mean or 0.0),
            "ms",
            method,
            dict(settings.as_dict(), threads=threads, device="cpu"),
            stats,
        )
    return out
