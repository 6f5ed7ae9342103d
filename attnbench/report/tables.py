"""Pure functions from records to tables (markdown, CSV); no measuring, no clock.

``attnbench report`` rebuilds the same bytes from the store alone, so everything shown --
the environment line included -- comes from the records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from ..metrics import RUNTIMES, SPECS, spec
from ..records import Record
from ..stats import (CLEAN_WAIT, RatioInterval, alternating_delta, alternating_difference, paired_ratio_interval,
                     unpaired_ratio_interval)
from ..suite import Point

DASH = "—"
UNSTABLE = "†"
UNCOUNTED = "‡"
UNSEEN = "§"
FAILS_CHECK = "✗"  # the row's module fails `attnbench check`: its numbers are of a module that breaks the contract
CONTENDED = "¶"
TIMED_BY = "°"  # °N: the row's timing was taken by process N of the note (several executors/hosts/processes timed this table)
ENV_FIELDS = [("torch", "torch"), ("timm", "timm"), ("fvcore", "fvcore"), ("device", "device_name"),
              ("threads", "threads"), ("dtype", "dtype"), ("date", "date")]
MACS_NOTE = ("MACs: one multiply-add = 1 MAC (the SE, CBAM and ECA papers call this a FLOP); convolutions, linears and "
             "matmuls as fvcore counts them, plus element-wise, reduction, pooling and normalisation work by the rules in "
             "the README; 'conv/linear GMACs' is the style-independent part alone.")


MEMORY_NOTE = ("Memory: 'act.' counts the elements of every operator output that is a new tensor in one eval forward "
               "(views and in-place outputs allocate nothing and count 0), per image; 'conv/linear act.' is fvcore's own count "
               "(conv, linear, matmul outputs only). 'saved for backward' is the bytes of the tensors autograd saves in one "
               "training forward (saved-tensor hooks, each storage once, parameters and buffers excluded), per image.")


TRAFFIC_NOTE = ("Traffic: 'MB moved' is the bytes every operator of one eval forward reads (its tensor arguments, weights "
                "included, each distinct element once) and writes (its outputs once), with no cache between operators; views "
                "move nothing, in-place operators write once (ShuffleNet V2's memory access cost; docs/cost-model.md). "
                "'operators' counts the aten calls at the dispatch level (views included), 'MACs/byte' is the arithmetic intensity.")


def md_text(value: object) -> str:
    """Text safe in a markdown table cell or list item: a '|' is escaped and a line break becomes a space, so
    a label, name or message can never split a row (every table row goes through :func:`md_row`)."""
    return " ".join(str(value).replace("|", "\\|").splitlines())


def md_row(cells: Sequence[object]) -> str:
    """One markdown table row: the one place cells are escaped."""
    return "| " + " | ".join(md_text(c) for c in cells) + " |"


def record_point(rec: Record) -> Point:
    """The (input size, batch, runtime) a record was measured at (runtime: eager when absent)."""
    size = rec.config.get("input_size") or (224, 224)
    return Point((int(size[0]), int(size[1])), int(rec.config.get("batch_size") or 1), rec.config.get("runtime", "eager"))


def point_order(p: Point) -> tuple:
    """Sweeps read left to right: resolution, then batch, then runtime (in attnbench's runtime order)."""
    rt = RUNTIMES.index(p.runtime) if p.runtime in RUNTIMES else len(RUNTIMES)
    return p.input_size[0] * p.input_size[1], p.input_size, p.batch_size, rt


def record_order(rec: Record) -> tuple:
    """Suite order: backbone, module variant, metric, point, seed -- the same for every table and the CSV."""
    return rec.position[0], rec.position[1], rec.metric, point_order(record_point(rec)), rec.seed or 0


def at_point(rec: Record, p: Point) -> bool:
    """Whether a record belongs in the table of point ``p``: it matches on the axes its metric depends on."""
    s, q = spec(rec.metric), record_point(rec)
    return all(getattr(q, axis) == getattr(p, axis) for axis in s.axes)


def same_group(rec: Record, base: Record) -> bool:
    """Whether two timing records were interleaved in one process (one timing group): only then is a Δ
    between them paired. Records from before group ids shared their group's start time and process."""
    ga, gb = rec.stats.get("group"), base.stats.get("group")
    if ga or gb:
        return ga == gb
    return (rec.host, rec.pid, rec.started) == (base.host, base.pid, base.started)


def _clean_limit(rec: Record) -> float:
    return float((rec.measurement.settings if rec.measurement else {}).get("clean_wait") or CLEAN_WAIT)


def _batches(rec: Record) -> int:
    """The batch means a timing record's intervals are taken over (stats.batches); 1 (over rounds) for records from
    before batching, so their tables stay what they were."""
    return int(rec.stats.get("batches") or 1)


def delta_interval(rec: Record, base: Record) -> Optional[RatioInterval]:
    """Δ% with its 95% interval from the raw samples both records keep: paired when the two were timed in
    one interleaved group, unpaired (Welch, and labelled so) when they come from different runs."""
    a, b = rec.stats.get("rounds_ms"), base.stats.get("rounds_ms")
    if not a or not b:
        return None
    wa, wb = rec.stats.get("rounds_wait"), base.stats.get("rounds_wait")
    if not same_group(rec, base):
        return unpaired_ratio_interval(a, b, b_waits=wa, a_waits=wb)
    if rec.stats.get("schedule") == "alternating" and base.stats.get("schedule") == "alternating":
        return alternating_delta(a, b, wa, wb, _clean_limit(rec), batches=_batches(rec))
    return paired_ratio_interval(a, b)


def delta_ms(rec: Record, base: Record) -> Optional[Tuple[float, Optional[float], Optional[float], bool]]:
    """Added milliseconds (variant - baseline) with the paired interval when the two were interleaved;
    the difference of medians, unpaired and without an interval, otherwise."""
    a, b = rec.stats.get("rounds_ms"), base.stats.get("rounds_ms")
    if a and b and same_group(rec, base) and rec.stats.get("schedule") == "alternating":
        d = alternating_difference(a, b, rec.stats.get("rounds_wait"), base.stats.get("rounds_wait"), _clean_limit(rec),
                                   batches=_batches(rec))
        return (d[0], d[1], d[2], True) if d is not None else (float("nan"), None, None, True)
    if rec.value is None or base.value is None:
        return None
    return rec.value - base.value, None, None, False


def contended(rec: Optional[Record]) -> bool:
    return bool(rec is not None and (rec.stats.get("contention") or {}).get("contended"))


def _ci_text(ci: Optional[RatioInterval]) -> str:
    if ci is None or ci.low is None:
        return ""
    return f" [{ci.low:+.1f}, {ci.high:+.1f}]"


def _ms_text(v: float, lo: Optional[float], hi: Optional[float]) -> str:
    digits = 3 if abs(v) < 10 else 2
    return f"{v:+.{digits}f}" + ("" if lo is None else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]")


def _pct(v: float, base: float) -> str:
    return f"{(v - base) / base * 100:+.2f}%" if base else DASH


def _fmt(metric: str, v: float) -> str:
    scale = spec(metric).scale
    if scale == 1e9:
        return f"{v / 1e9:.3f}" if v >= 1e9 else f"{v / 1e9:.4f}"
    if scale != 1:
        return f"{v / scale:.3f}"
    return f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _cell(kind: str, metric: str, rec: Optional[Record], base: Optional[Record]) -> str:
    v = rec.value if rec is not None else None
    if v is None:
        return (rec.status_text() if rec is not None else DASH) if kind in ("value", "spread", "direct") else DASH
    stats = rec.stats
    if kind == "value":
        return _fmt(metric, v) + (UNCOUNTED if stats.get("unhandled") or stats.get("counters_agree") is False else "")
    if kind == "spread":
        mark = (UNSTABLE if stats.get("unstable") else "") + (CONTENDED if contended(rec) else "")
        return f"{_fmt(metric, v)} ({stats.get('iqr_ms', float('nan')):.2f}){mark}"
    if kind == "direct":
        lo, hi = stats.get("low_ms"), stats.get("high_ms")
        text = f"{v:.3f}" + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")
        return text + (CONTENDED if contended(rec) else "")
    if kind == "throughput":
        ips = stats.get("images_per_s")
        return DASH if ips is None else f"{ips:.1f}"
    if kind.startswith("part:"):
        part = stats.get(kind[5:])
        return _fmt(metric, part) if part is not None else DASH
    if ":" in kind and kind.split(":")[0] in STAT_KINDS:
        return _stat_cell(kind, rec, base)
    bv = base.value if base is not None else None
    if bv is None or rec is base:
        return DASH
    if kind == "delta_abs":
        return f"{int(v - bv):+,}"
    if kind == "delta_ci":
        ci = delta_interval(rec, base)
        mark = CONTENDED if contended(rec) or contended(base) else ""
        if ci is not None and ci.pct != ci.pct:  # NaN: no round had enough undisturbed pairs
            return f"not supported{mark}"
        text = f"{ci.pct:+.2f}%{_ci_text(ci)}" if ci is not None else _pct(v, bv)
        return text + ("" if ci is None or ci.paired else " (unpaired)") + mark
    if kind == "delta_ms":
        d = delta_ms(rec, base)
        mark = CONTENDED if contended(rec) or contended(base) else ""
        if d is not None and d[0] != d[0]:
            return f"not supported{mark}"
        return DASH if d is None else _ms_text(d[0], d[1], d[2]) + ("" if d[3] else " (unpaired)") + mark
    return _pct(v, bv)


STAT_KINDS = ("mb", "delta_pct", "count", "ratio")


def _stat_cell(kind: str, rec: Record, base: Optional[Record]) -> str:
    """A stats field X of the record: mb:X (bytes as MB), delta_pct:X (Δ% vs the baseline's X),
    count:X (an integer with its Δ vs the baseline), ratio:X (two decimals); a dash where a side lacks it."""
    how, name = kind.split(":", 1)
    v = rec.stats.get(name)
    if v is None:
        return DASH
    b = base.stats.get(name) if base is not None and base is not rec and base.value is not None else None
    if how == "mb":
        return f"{v / 1e6:.1f}"
    if how == "ratio":
        return f"{v:.2f}"
    if how == "count":
        return f"{int(v):,}" + (f" ({int(v - b):+,})" if b is not None else "")
    return DASH if b is None else _pct(v, b)


def environment_line(records: Sequence[Record]) -> str:
    """Versions, device, threads (of the timings and trainings: counts do not depend on them, and on Dask
    they run at the workers' share of a node), dtype, date."""
    parts = []
    for label, key in ENV_FIELDS:
        vals = []
        for r in records:
            if key == "threads" and spec(r.metric).kind == "count":
                continue
            v = r.env.get(key)
            if v is not None and str(v) not in vals:
                vals.append(str(v))
        if vals:
            parts.append(f"{label} {' / '.join(vals)}")
    plugins = sorted({f"{d} {v}" for r in records for d, v in (r.env.get("plugins") or {}).items()})
    if plugins:
        parts.append(f"plugins {', '.join(plugins)}")
    return "Environment: " + ", ".join(parts) + "."


def _distinct(values) -> str:
    return " / ".join(dict.fromkeys(str(v) for v in values))


def settings_line(records: Sequence[Record]) -> str:
    """What the numbers depend on, read from the records (input, batch, timing protocol)."""
    sizes = _distinct(f"{r.config['input_size'][0]}x{r.config['input_size'][1]}" for r in records if "input_size" in r.config)
    out = [f"input {sizes}"] if sizes else []
    built = _distinct(_options_text(r.config["backbone_options"]) for r in records if r.config.get("backbone_options"))
    if built:  # timm.create_model keywords every backbone was built with: part of what every number means
        out.append(f"backbones built with {built}")
    if any(spec(r.metric).kind == "count" for r in records):
        out.append("counts per image")
    timed = [r for r in records if spec(r.metric).kind in ("timing", "memory")]
    if timed:
        out.append(f"batch {_distinct(r.config.get('batch_size') for r in timed)} for timings")
        measured = [r.measurement.settings for r in timed if r.measurement is not None and "rounds" in r.measurement.settings]
        out += [_protocol(s) for s in dict.fromkeys(_freeze(s) for s in measured)]
        runtimes = _distinct(r.config.get("runtime", "eager") for r in timed)
        out.append(f"runtime {runtimes}")
    text = "Settings: " + ", ".join(out) + "."
    if any(r.stats.get("schedule") == "alternating" for r in timed):
        batched = sorted({_batches(r) for r in timed if r.stats.get("schedule") == "alternating"} - {1})
        over = (f"t interval over {' / '.join(map(str, batched))} batch means of consecutive rounds (b-1 df; the host's "
                "drift over the run is in the interval)" if batched else "t interval over rounds (n-1 df)")
        text += (" Δ latency [95% CI]: paired only between rows timed in one interleaved group: the variants alternate "
                 "call by call; per round the median log ratio over call pairs in which neither call waited for a CPU "
                 f"(more than its clean_wait share of thread time in the run queue); {over}, shown "
                 "as %. Rows timed in different processes are marked (unpaired): Welch's t on each side's per-round log medians.")
    elif any(r.stats.get("rounds_ms") for r in timed):
        text += (" Δ latency [95% CI]: paired over the interleaved rounds: per round the ratio of the two medians, "
                 "t interval on the mean log ratio (n-1 df), shown as %.")
    if any(r.stats.get("prepare_s") is not None for r in timed):
        text += (" 'setup s': export / compile / session creation (with the first, compiling call), timed apart and "
                 "never inside the latency; each runtime's output was checked against eager before timing.")
    return text


def _options_text(options: dict) -> str:
    """{in_chans: 1, drop_rate: 0.1} as 'in_chans=1 drop_rate=0.1' (sorted: one text per set of options)."""
    return " ".join(f"{k}={json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}" for k, v in sorted(options.items()))


def _freeze(s: dict) -> tuple:
    return tuple(sorted((k, str(s.get(k))) for k in ("rounds", "min_time", "warmup", "target", "max_time", "nice",
                                                     "clean_wait", "amp", "channels_last", "schedule")))


def _protocol(frozen: tuple) -> str:
    """One timing protocol in words, from a record's measurement settings."""
    s = {k: (None if v == "None" else v) for k, v in frozen}
    extras = [k for k in ("amp", "channels_last") if s.get(k) not in (None, "False")]
    if s.get("schedule") != "alternating":
        text = f"{s['rounds']} interleaved rounds x >= {s['min_time']} s per variant, warm-up {s['warmup']}"
    else:
        text = (f"variants alternating call by call in rounds of >= {s['min_time']} s per variant, warm-up {s['warmup']}, "
                + (f"rounds added until every Δ's 95% half-width <= {s['target']} points or {s['max_time']} s of timing "
                   f"(at least {s['rounds']} rounds)" if s.get("target") else f"{s['rounds']} rounds")
                + (f", nice {s['nice']} asked" if s.get("nice") is not None else ""))
    return text + (f", {', '.join(f'{k} {s[k]}' for k in extras)}" if extras else "")


@dataclass(frozen=True)
class TimingGroup:
    """One interleaved timing group as the records tell it: how its rounds ended and what the machine did."""

    at: str  # 'resnet18 latency_cpu' (plus the point in a sweep)
    records: Tuple[Record, ...]
    stop: Dict
    machine: Dict

    @property
    def what(self) -> str:
        return "direct time" if self.records[0].metric == "attention_cpu" else "Δ"

    @property
    def unsupported(self) -> List[str]:
        """Rows whose Δ (or direct time) this group cannot support: all of them when its baseline was
        contended, else the contended rows."""
        base = next((r for r in self.records if r.label == r.stats.get("baseline")), None)
        if contended(base):
            return [r.label for r in self.records if r is not base]
        return [r.label for r in self.records if contended(r) and r is not base]


def timing_groups(records: Sequence[Record]) -> List[TimingGroup]:
    groups: Dict[str, List[Record]] = {}
    for r in records:
        if r.ok and r.stats.get("group") and spec(r.metric).kind == "timing":
            groups.setdefault(r.stats["group"], []).append(r)
    several = len(sweep_points(records)) > 1
    out = []
    for recs in groups.values():
        first = recs[0]
        at = f"{first.backbone} {first.metric}" + (f" @ {_axis_label(first.metric, record_point(first))}" if several else "")
        out.append(TimingGroup(at, tuple(recs), first.stats.get("stop") or {}, first.stats.get("contention") or {}))
    return out


def contention_line(records: Sequence[Record]) -> str:
    """One line naming every timing group measured while other processes took the CPU and what it cannot support."""
    bad = [g for g in timing_groups(records) if g.unsupported]
    if not bad:
        return ""
    granted = all(g.machine.get("nice_granted") for g in bad)
    return ("contended: " + "; ".join(f"{g.at} ({_machine_text(g.machine)}): {g.what} of {', '.join(g.unsupported)}" for g in bad)
            + " not supported (timed while other processes took the CPU); rerun on idle cores"
            + ("" if granted else ", or as root so attnbench can raise its priority (latency.nice)"))


def needed_text(g: "TimingGroup", widest: float) -> str:
    """How much timing the target would take on this host, from what the group reached: a half-width shrinks as
    1/sqrt(timing), so T x (widest / target)^2 (an estimate: the host may change)."""
    seconds, target = g.stop.get("seconds") or 0, g.stop.get("target") or 0
    if not seconds or not target or widest <= target:
        return ""
    return (f"this host would need about {seconds * (widest / target) ** 2:.0f} s of timing for ±{target:g} "
            f"(latency.max_time), or accept ±{widest:.1f} (latency.target)")


def precision_line(records: Sequence[Record]) -> str:
    """One line naming every timing group that stopped at its time budget before its precision target, with the
    half-width it reached and the time the target would take here: the table's precision, said plainly."""
    missed = []
    for g in timing_groups(records):
        if g.stop.get("reason") != "max_time" or not g.stop.get("target") or g.unsupported or _batches(g.records[0]) <= 1:
            continue
        widths = [(r.label, (r.stats.get("stop") or {}).get("halfwidth")) for r in g.records if r.stats.get("baseline") != r.label]
        widths = [(lab, w) for lab, w in widths if w is not None]
        if widths:
            lab, w = max(widths, key=lambda t: t[1])
            missed.append(f"{g.at}: ±{w:.2f} points ({lab}) after {g.stop.get('seconds') or 0:.0f} s; {needed_text(g, w)}")
    if not missed:
        return ""
    return "precision target not met: " + "; ".join(missed) + " (the host's timing noise; each Δ's interval says it)"


def timing_notes(records: Sequence[Record]) -> List[str]:
    """Per timing group: how its rounds ended (target met, time spent, contended) and what the machine was
    doing; one line each, for the table's notes."""
    notes = []
    for g in timing_groups(records):
        machine = _machine_text(g.machine)
        lost = no_delta_note(g)  # a Δ shown as "not supported" always says why
        if lost and not g.unsupported:
            notes.append(lost)
        if g.unsupported:
            notes.append(f"{CONTENDED} contended: {g.at}: {machine}; {g.what} of {', '.join(g.unsupported)} not supported "
                         "(measured while other processes took the CPU, not comparable with a quiet run); rerun on idle cores"
                         + ("" if g.machine.get("nice_granted") else ", or as root so attnbench can raise its priority (latency.nice)"))
            continue
        widths = [(r.label, (r.stats.get("stop") or {}).get("halfwidth", (r.stats.get("stop") or {}).get("halfwidth_pct")))
                  for r in g.records if r.stats.get("baseline") != r.label]
        widths = [(lab, w) for lab, w in widths if w is not None]
        widest = max(widths, key=lambda t: t[1]) if widths else None
        reason, target = g.stop.get("reason"), g.stop.get("target")
        unit = "%" if g.records[0].metric == "attention_cpu" else " points"
        if reason in ("target met", "max_time") and target:
            done = (f"target ±{target:g}{unit} met" if reason == "target met"
                    else f"time budget {g.stop.get('max_time'):g} s spent before target ±{target:g}{unit}")
            notes.append(f"precision: {g.at}: {done} after {g.stop.get('rounds')} rounds ({g.stop.get('seconds') or 0:.0f} s)"
                         + (f", widest ±{widest[1]:.2f}{unit} ({widest[0]})" if widest else "")
                         + (f"; {needed_text(g, widest[1])}" if widest and reason == "max_time" and _batches(g.records[0]) > 1 else "")
                         + f"; {machine}")
        elif (g.machine.get("others_cpu") or 0) >= 0.10:
            notes.append(f"busy machine: {g.at}: {machine}")
    return notes


def no_delta_note(g: "TimingGroup") -> str:
    """Why the rows of a timing group whose paired Δ cannot be computed show "not supported" ('' when every Δ
    could be): a paired Δ takes, per round, the median over at least MIN_PAIRS undisturbed call pairs, so
    rounds of fewer calls (a short ``min_time`` with ``min_iters`` below MIN_PAIRS) or calls that mostly waited
    for a CPU leave no round to take it from."""
    from ..stats import MIN_PAIRS

    base = next((r for r in g.records if r.label == r.stats.get("baseline")), None)
    if base is None:
        return ""
    lost = [r for r in g.records if r is not base and (lambda ci: ci is not None and ci.pct != ci.pct)(delta_interval(r, base))]
    if not lost:
        return ""
    b = base.stats.get("rounds_ms") or []
    pairs = max((min(len(v), len(w)) for r in lost for v, w in zip(r.stats.get("rounds_ms") or [], b)), default=0)
    if pairs < MIN_PAIRS:
        why = (f"every round timed at most {pairs} call pair(s), fewer than the {MIN_PAIRS} a round needs for a paired Δ; "
               f"raise latency.min_iters to {MIN_PAIRS} or more (or latency.min_time)")
    else:
        why = (f"no round had {MIN_PAIRS} undisturbed call pairs ({_machine_text(g.machine)}): other processes took the "
               "CPU; rerun on idle cores, or with more rounds")
    return f"Δ not supported: {g.at}: {', '.join(r.label for r in lost)}: {why}"


def _machine_text(c: dict) -> str:
    parts = []
    if c.get("others_cpu") is not None:
        parts.append(f"other processes used {100 * c['others_cpu']:.0f}% of the CPU")
    if c.get("clean") is not None:
        parts.append(f"{100 * c['clean']:.0f}% of calls ran undisturbed")
    if c.get("loadavg") is not None:
        parts.append(f"load {c['loadavg']:.1f}")
    if c.get("steal"):
        parts.append(f"steal {100 * c['steal']:.1f}%")
    if c.get("nice") is not None:
        parts.append(f"nice {c['nice']}" + ("" if c.get("nice_granted") else " (not permitted to raise)"))
    return ", ".join(parts) or "machine state not readable here"


def where(cells: Dict[str, Record]) -> str:
    """Where the module sits, from any record of the row."""
    from ..where import describe

    attach = next((c.attachment for c in cells.values() if c.attachment), None)
    return describe(attach) if attach else DASH


def unseen_state(cells: Dict[str, Record]) -> str:
    """Why a row's counts may mislead: state parameters() cannot see (recorded with every count: it
    deflates params and inflates saved-for-backward, where those weights count as activations), or no
    parameters but compute inside the attached module (parameter-free by design, or hidden state)."""
    hidden = next((c for c in cells.values() if c.value is not None and c.stats.get("hidden_numel")
                   and c.module not in ("none", "native")), None)
    if hidden is not None:
        saved = cells.get("train_memory")
        inflated = "; 'saved for backward' counts them as activations" if saved is not None and saved.stats.get("hidden_numel") else ""
        return (f"state parameters() cannot see: {hidden.stats['hidden_numel']:,} elements "
                f"({', '.join(hidden.stats['hidden_state'][:3])}){inflated}")
    params, macs = cells.get("params"), cells.get("macs")
    if params is None or params.value is None or params.module in ("none", "native"):
        return ""
    if params.stats.get("attention") == 0 and macs is not None and macs.value is not None and macs.stats.get("attention"):
        return f"no registered parameters, {macs.stats['attention']:,} MACs inside the module"
    return ""


def failed_check(cells) -> str:
    """The checks the row's module fails (``attnbench check``, stored by the runner in its ok records), or ''."""
    return next((c.stats["check_failed"] for c in cells.values() if c.stats.get("check_failed")), "")


def marked(label: str, cells, origins: Optional[Dict[tuple, int]] = None) -> str:
    """A row's label with its marks: § (state/compute parameters() cannot see), ✗ (its module fails check),
    °N (timed by process N of the note, when several processes timed the table)."""
    timed = next((c for c in cells.values() if _is_timing(c)), None)
    by = f"{TIMED_BY}{origins[timing_origin(timed)]}" if origins and timed is not None else ""
    return label + (UNSEEN if unseen_state(cells) else "") + (FAILS_CHECK if failed_check(cells) else "") + by


def _is_timing(rec: Record) -> bool:
    return rec.ok and spec(rec.metric).kind == "timing"


def timing_origin(rec: Record) -> tuple:
    """Who timed a record: (executor, Dask worker or '', host, pid)."""
    ex = rec.executor or {}
    return (ex.get("kind", "local"), ex.get("worker", ""), rec.host, rec.pid)


def timing_origins(records: Sequence[Record]) -> Dict[tuple, int]:
    """origin -> its number, in order of first appearance, when more than one process timed these records
    (a Dask run, or a run resumed on another executor); empty otherwise."""
    origins: Dict[tuple, int] = {}
    for r in records:
        if _is_timing(r):
            origins.setdefault(timing_origin(r), len(origins) + 1)
    return origins if len(origins) > 1 else {}


def origins_note(origins: Dict[tuple, int]) -> str:
    def text(o):
        kind, worker, host, pid = o
        where = f"pid {pid} on {host or '?'}"
        return f"Dask worker {worker} ({where})" if kind == "dask" else f"{kind} process ({where})"

    return (f"{TIMED_BY}N: the process that timed the row: " + "; ".join(f"{TIMED_BY}{n} {text(o)}" for o, n in origins.items())
            + ". Each timing group ran in one process; a Δ between rows of different processes is unpaired.")


def _is_bare_baseline(rec: Record) -> bool:
    return rec.module == "none"


def _columns(metric: str, records) -> Tuple[Tuple[str, str], ...]:
    """A metric's columns, plus its optional ones when some record has that stat (setup time)."""
    extra = tuple(c for c in spec(metric).optional_columns
                  if any(r.metric == metric and r.stats.get(c[1].split(":", 1)[1]) is not None for r in records))
    return spec(metric).columns + extra


def _table(rows: Dict[Tuple[str, str], Dict[str, Record]], metrics: List[str],
           origins: Optional[Dict[tuple, int]] = None) -> List[str]:
    baselines = {b: cells for (b, _), cells in rows.items() if any(_is_bare_baseline(c) for c in cells.values())}
    records = [r for cells in rows.values() for r in cells.values()]
    columns = {m: _columns(m, records) for m in metrics}
    header = ["backbone", "module", "where"] + [h for m in metrics for h, _ in columns[m]]
    lines = [md_row(header), "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for (backbone, label), cells in rows.items():
        base = baselines.get(backbone, {})
        vals = [backbone, marked(label, cells, origins), where(cells)]
        for m in metrics:
            vals += [_cell("delta_ms", "latency_cpu", cells.get("latency_cpu"), base.get("latency_cpu")) if kind == "whole_ms"
                     else _cell(kind, m, cells.get(m), base.get(m)) for _, kind in columns[m]]
        lines.append(md_row(vals))
    return lines


def render_markdown(records: Sequence[Record], title: Optional[str] = None) -> str:
    """A row per (backbone, module), Δ against that backbone's bare 'none' row; one table per
    backbone when there are three or more backbones, else one table."""
    if not records:
        return f"# {title or 'attnbench'}\n\nNo records.\n"
    records = sorted(records, key=record_order)
    metrics = [m for m in SPECS if any(r.metric == m for r in records) and spec(m).columns]
    lines = [f"# {title or records[0].suite}", "", environment_line(records), settings_line(records)]
    if any(spec(m).scale == 1e9 for m in metrics):
        lines.append(MACS_NOTE)
    if any(m in ("activations", "train_memory") for m in metrics):
        lines.append(MEMORY_NOTE)
    if any(r.metric == "macs" and r.stats.get("bytes") is not None for r in records):
        lines.append(TRAFFIC_NOTE)
    lines.append("Δ: against the same backbone's `none` row, the bare backbone (native attention removed where it has any); "
                 "a `native` row is timm's model as built, so its Δ is what the native attention costs.")
    lines.append("")
    points, origins = sweep_points(records), timing_origins(records)
    if len(points) <= 1:
        lines += _point_tables(records, metrics, "##", origins)
    else:
        lines += render_pivots(records, metrics)
        for p in points:
            lines += ["", f"## {p.label}", ""] + _point_tables([r for r in records if at_point(r, p)], metrics, "###", origins)
    lines += render_sites(records)
    notes = _notes(records) + ([origins_note(origins)] if origins else [])
    if notes:
        lines += [""] + [f"- {md_text(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def _rows(records: Sequence[Record]) -> Dict[Tuple[str, str], Dict[str, Record]]:
    """(backbone, module label) -> metric -> record, in the records' order."""
    rows: Dict[Tuple[str, str], Dict[str, Record]] = {}
    for r in records:
        rows.setdefault((r.backbone, r.label), {})[r.metric] = r
    return rows


def _point_tables(records: Sequence[Record], metrics: List[str], level: str,
                  origins: Optional[Dict[tuple, int]] = None) -> List[str]:
    """The cost table of one point: a row per (backbone, module); one table per backbone from three up."""
    rows = _rows(records)
    metrics = [m for m in metrics if any(r.metric == m for r in records)]
    backbones = list(dict.fromkeys(b for b, _ in rows))
    if len(backbones) < 3:
        return _table(rows, metrics, origins)
    lines = []
    for b in backbones:
        lines += [f"{level} {b}", ""] + _table({k: v for k, v in rows.items() if k[0] == b}, metrics, origins) + [""]
    return lines[:-1]


def whole_network_ms(records: Sequence[Record], rec: Record):
    """The paired whole-network Δ ms (eager latency_cpu vs the backbone's `none` at the same size and batch)
    that an attention_cpu record's direct time is set beside; None when the suite did not time it."""
    p = record_point(rec)
    lat = {(r.backbone, r.label): r for r in records if r.metric == "latency_cpu" and r.ok
           and record_point(r) == Point(p.input_size, p.batch_size, "eager")}
    v, b = lat.get((rec.backbone, rec.label)), lat.get((rec.backbone, "none"))
    return delta_ms(v, b) if v is not None and b is not None else None


def render_sites(records: Sequence[Record]) -> List[str]:
    """Direct attribution: per (backbone, module) the attached modules' own time, per stage and in total,
    beside the whole network's Δ ms from the latency rows."""
    recs = [r for r in sorted(records, key=record_order) if r.metric == "attention_cpu" and r.ok]
    if not recs:
        return []
    stages = sorted({int(k) for r in recs for k in (r.stats.get("stages") or {})})
    several = len({record_point(r) for r in recs}) > 1
    header = ["backbone", "module"] + (["point"] if several else []) + [f"stage {k} ms" if k else "stage ? ms" for k in stages] \
        + ["direct total ms [95% CI]", "whole network Δ ms [95% CI]", "direct / whole"]
    lines = ["", "## Attention modules alone, per stage (direct attribution)", "",
             "Each attached module timed alone on the input it sees in the model (captured from one forward), every site "
             "of every variant interleaved call by call; per stage the sum of its sites' per-round medians [95% CI over "
             "rounds]. 'whole network' is the paired Δ ms of the latency table (same size and batch, eager).", "",
             md_row(header), "|---|---|" + ("---|" if several else "") + "---:|" * (len(header) - 2 - several)]
    for r in recs:
        st_ = r.stats.get("stages") or {}
        vals = [r.backbone, r.label] + ([_axis_label(r.metric, record_point(r))] if several else [])
        for k in stages:
            e = st_.get(str(k))
            vals.append(DASH if not e or e.get("ms") is None else f"{e['ms']:.3f}" + (f" (x{e['sites']})" if e.get("sites") else ""))
        vals.append(_cell("direct", r.metric, r, None))
        whole = whole_network_ms(records, r)
        if whole is not None and whole[0] != whole[0]:
            vals.append(f"not supported{CONTENDED}")
        else:
            vals.append(DASH if whole is None else _ms_text(*whole[:3]) + ("" if whole[3] else " (unpaired)"))
        vals.append(f"{r.value / whole[0]:.2f}" if whole is not None and whole[0] > 0 else DASH)
        lines.append(md_row(vals))
    return lines


def sweep_points(records: Sequence[Record]) -> List[Point]:
    """The points a set of records spans, in sweep order (those of timings when there are any)."""
    timed = [r for r in records if "runtime" in spec(r.metric).axes]
    return sorted({record_point(r) for r in (timed or records)}, key=point_order)


def _axis_label(metric: str, p: Point) -> str:
    return p.axes_label(spec(metric).axes)


def _unit_label(metric: str) -> str:
    s = spec(metric)
    if s.scale == 2 ** 20:
        return "MiB"
    return {1e6: "M ", 1e9: "G"}.get(s.scale, "") + s.unit + (" (median)" if s.kind == "timing" else "")


def render_pivots(records: Sequence[Record], metrics: List[str]) -> List[str]:
    """One pivot per metric: a row per (backbone, module), a column per point the metric varies over;
    the `none` row gives the value, the others their Δ% (timings with the paired 95% interval)."""
    lines = ["## Across the sweep", ""]
    for m in metrics:
        recs = [r for r in records if r.metric == m]
        pts = sorted({record_point(r) for r in recs}, key=point_order)
        if len(pts) < 2:
            continue
        header = ["backbone", "module"] + [_axis_label(m, p) for p in pts]
        lines += [f"**{m}**: the `none` row in {_unit_label(m)}, the others Δ% vs `none`"
                  + (" [95% CI]" if spec(m).kind == "timing" else ""), "",
                  md_row(header), "|---|---|" + "---:|" * len(pts)]
        index = {(r.backbone, r.label, record_point(r)): r for r in recs}
        for backbone, label in dict.fromkeys((r.backbone, r.label) for r in recs):
            vals = [backbone, label + (FAILS_CHECK if failed_check({i: r for i, r in enumerate(recs) if (r.backbone, r.label)
                                                                   == (backbone, label)}) else "")]
            for p in pts:
                rec, base = index.get((backbone, label, p)), index.get((backbone, "none", p))
                if rec is None or rec.value is None:
                    vals.append(rec.status_text() if rec is not None else DASH)
                elif rec.module == "none":
                    vals.append(_fmt(m, rec.value))
                else:
                    vals.append(_cell("delta_ci" if spec(m).kind == "timing" else "delta_pct", m, rec, base))
            lines.append(md_row(vals))
        lines.append("")
    return lines[:-1] if len(lines) > 2 else []


def _notes(records: Sequence[Record]) -> List[str]:
    notes = timing_notes(records)
    if any(r.stats.get("unstable") for r in records):
        notes.append(f"{UNSTABLE} IQR above 10% of the median: unstable timing, rerun on a quieter machine.")
    uncounted: Dict[str, set] = {}
    for r in records:
        for op in r.stats.get("unhandled") or {}:
            uncounted.setdefault(op, set()).add(f"{r.backbone}/{r.label}")
    if uncounted:
        ops = "; ".join(f"{op} ({', '.join(sorted(rows))})" for op, rows in sorted(uncounted.items()))
        notes.append(f"{UNCOUNTED} operators with no counting rule, so not in these MACs: {ops}.")
    for r in records:
        if r.stats.get("counters_agree") is False and not r.stats.get("unhandled"):
            notes.append(f"{UNCOUNTED} {r.backbone}/{r.label}: the two MAC counters differ: {r.stats.get('counter_difference', '?')}.")
    for r in records:
        if r.ok and r.stats.get("fvcore_error"):
            why = (str(r.stats["fvcore_error"]).strip().splitlines() or ["?"])[0][:160]
            notes.append(f"{r.backbone}/{r.label}/{r.metric}: fvcore could not trace it, so its fvcore column is "
                         f"{DASH} ({why}).")
    for (backbone, label), cells in _rows(records).items():
        why = unseen_state(cells)
        if why:
            notes.append(f"{UNSEEN} {backbone}/{label}: {why}.")
    failing = {}
    for r in records:
        if r.stats.get("check_failed"):
            failing.setdefault((r.label, r.module), r.stats["check_failed"])
    for (label, module), text in failing.items():
        notes.append(f"{FAILS_CHECK} {label}: `attnbench check {module}` fails ({text}); its numbers are of a module "
                     "that breaks the plugin contract.")
    several = len(sweep_points(records)) > 1
    for r in records:
        if r.status == "failed":
            at = f" @ {_axis_label(r.metric, record_point(r))}" if several else ""
            notes.append(f"failed {r.backbone}/{r.label}/{r.metric}{at}: {r.error['type']}: {r.error['message']}")
    for status in ("unsupported", "skipped"):
        for note in sorted({r.note for r in records if r.status == status}):
            which = sorted({f"{r.backbone}/{r.label}" if status == "unsupported" else
                            r.metric + (f" @ {_axis_label(r.metric, record_point(r))}" if several else "")
                            for r in records if r.status == status and r.note == note})
            notes.append(f"{status} {', '.join(which)}: {note}")
    return notes


def flat_records(records: Sequence[Record]) -> pd.DataFrame:
    rows = []
    bases = {(r.backbone, r.metric, record_point(r)): r for r in records if r.module == "none"}
    for r in sorted(records, key=record_order):
        m = r.measurement
        p = record_point(r)
        row = {"suite": r.suite, "backbone": r.backbone, "label": r.label, "module": r.module, "metric": r.metric,
               "input_size": f"{p.input_size[0]}x{p.input_size[1]}", "batch_size": p.batch_size, "runtime": p.runtime,
               "status": r.status, "key": r.key, "value": m.value if m else None, "unit": m.unit if m else None,
               "method": m.method if m else None}
        for k, v in r.stats.items():
            if not isinstance(v, (dict, list)):
                row[k] = v
        for part in ("stop", "contention"):
            for k, v in (r.stats.get(part) or {}).items():
                if not isinstance(v, (dict, list)):
                    row[f"{part}_{k}"] = v
        base = bases.get((r.backbone, r.metric, p))
        if spec(r.metric).kind == "timing" and r.ok and base is not None and base is not r and base.ok:
            ci = delta_interval(r, base) if r.stats.get("rounds_ms") else None
            if ci is not None:
                row.update(delta_pct=ci.pct, delta_low=ci.low, delta_high=ci.high, delta_paired=ci.paired,
                           delta_method=ci.method)
        row["where"] = where({r.metric: r})
        row["error"] = f"{r.error['type']}: {r.error['message']}" if r.error else ""
        row["note"] = r.note
        row.update({f"env_{k}": v for k, v in r.env.items() if not isinstance(v, dict)})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CompareRow:
    """One cell matched between run A and run B; ``delta`` is B vs A in % with its noise band."""

    backbone: str
    label: str
    metric: str
    point: Point
    a: Optional[Record]
    b: Optional[Record]
    delta: Optional[RatioInterval]
    seed: Optional[int] = None  # accuracy: one training run per seed, matched seed by seed

    @property
    def contended(self) -> str:
        """Which side was timed while other processes took the CPU: '', 'A', 'B' or 'A and B'."""
        return " and ".join(n for n, r in (("A", self.a), ("B", self.b)) if contended(r))

    def regression_above(self, pct: float) -> bool:
        """Worse by more than ``pct`` and beyond the noise band: B's Δ exceeds pct and its interval excludes 0.
        Without a band (exact counts; timings stored before raw samples were kept) Δ > pct is enough.
        Accuracy is never a cost regression here, nor a timing from a contended run (the gate says why)."""
        if self.delta is None or spec(self.metric).kind == "accuracy" or self.contended:
            return False
        if self.delta.low is None:
            return self.delta.pct > pct
        return self.delta.pct > pct and self.delta.low > 0


def _rounds(rec: Record):
    """A timing record's per-round samples: its calls (latency), or its per-round totals (attention_cpu)."""
    if rec.stats.get("rounds_ms"):
        return rec.stats["rounds_ms"]
    totals = rec.stats.get("rounds_total_ms")
    return [[t] for t in totals] if totals else None


def compare_rows(a: Sequence[Record], b: Sequence[Record]) -> List[CompareRow]:
    """Cells of two runs matched on (backbone, module label, metric, point, seed)."""
    def index(recs):
        return {(r.backbone, r.label, r.metric, record_point(r), r.seed): r for r in sorted(recs, key=record_order)}

    ia, ib = index(a), index(b)
    rows = []
    for key in [k for k in ia if k in ib] + [k for k in ia if k not in ib] + [k for k in ib if k not in ia]:
        ra, rb = ia.get(key), ib.get(key)
        delta = None
        if ra is not None and rb is not None and ra.value is not None and rb.value is not None and ra.value > 0:
            sa, sb = _rounds(ra), _rounds(rb)
            delta = unpaired_ratio_interval(sb, sa, b_waits=rb.stats.get("rounds_wait"),
                                            a_waits=ra.stats.get("rounds_wait")) if sa and sb else None
            if delta is None:  # counts (exact), one training run a side, or no usable raw samples: the plain ratio
                delta = RatioInterval((rb.value / ra.value - 1) * 100, None, None, 1, no_band(ra, rb, sa, sb))
        rows.append(CompareRow(key[0], key[1], key[2], key[3], ra, rb, delta, key[4]))
    return rows


def no_band(ra: Record, rb: Record, sa, sb) -> str:
    """Why a compared cell has no noise band: what the plain ratio is."""
    kind = spec(ra.metric).kind
    if kind == "count":
        return "exact"
    if kind == "accuracy":
        return f"one training run a side (seed {ra.seed}): no band; compare seed means in the accuracy tables"
    if sa and sb:
        return "raw samples kept, but no round of undisturbed calls on one side: no band"
    return "no raw samples" + (f" in {' and '.join(n for n, x in (('A', sa), ('B', sb)) if not x)}" if sa or sb else "")


def render_compare(a: Sequence[Record], b: Sequence[Record], name_a: str = "A", name_b: str = "B",
                   fail_above: Optional[float] = None) -> str:
    """Δ between two runs, matched on (backbone, module label, metric, point), with the noise band of
    timings (Welch's 95% interval on the per-round log medians of each run; runs are not paired)."""
    return render_compare_rows(compare_rows(a, b), name_a, name_b, fail_above)


def render_compare_rows(rows: Sequence[CompareRow], name_a: str = "A", name_b: str = "B",
                        fail_above: Optional[float] = None) -> str:
    several = len({r.point for r in rows}) > 1
    seeds = any(r.seed is not None for r in rows)
    lines = [f"# compare {name_a} -> {name_b}", "",
             "Δ % = B vs A; timings carry a 95% noise band from each run's raw per-round samples (Welch's t on the "
             "per-round log medians of undisturbed calls); counts are exact. A timing from a run that was contended "
             f"(other processes took the CPU: {CONTENDED} in its table) is never called a regression or an improvement.", "",
             "| backbone | module | metric |" + (" point |" if several else "") + (" seed |" if seeds else "")
             + " unit | A | B | Δ % | noise band |",
             "|---|---|---|" + ("---|" if several else "") + ("---:|" if seeds else "") + "---|---:|---:|---:|---|"]
    for row in rows:
        unit = _unit_label(row.metric)  # the unit of A and B as shown (M parameters, GMACs, ms), not as stored
        fa = _fmt(row.metric, row.a.value) if row.a is not None and row.a.value is not None else (row.a.status_text() if row.a else DASH)
        fb = _fmt(row.metric, row.b.value) if row.b is not None and row.b.value is not None else (row.b.status_text() if row.b else DASH)
        d = row.delta
        delta = f"{d.pct:+.2f}%" if d is not None else DASH
        band = (f"[{d.low:+.1f}, {d.high:+.1f}]" if d.low is not None else d.method) if d is not None else DASH
        if row.contended:
            band += f" — not comparable: {row.contended} contended{CONTENDED}"
        elif fail_above is not None and row.regression_above(fail_above):
            band += f" **regression > {fail_above:g}%**"
        point = [_axis_label(row.metric, row.point)] if several else []
        seed = [DASH if row.seed is None else str(row.seed)] if seeds else []
        lines.append(md_row([row.backbone, row.label, row.metric] + point + seed + [unit, fa, fb, delta, band]))
    return "\n".join(lines) + "\n"
