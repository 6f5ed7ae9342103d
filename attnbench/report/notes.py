"""The lines around a table: environment, settings, timing groups and their stop rules, marks explained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..core.metrics import spec
from ..records.record import Record
from .cells import _axis_label, _batches, contended, delta_interval, record_point, sweep_points
from .markdown import CONTENDED, DASH, FAILS_CHECK, TIMED_BY, UNSEEN

ENV_FIELDS = [
    ("torch", "torch"),
    ("timm", "timm"),
    ("fvcore", "fvcore"),
    ("device", "device_name"),
    ("threads", "threads"),
    ("dtype", "dtype"),
    ("date", "date"),
]


MACS_NOTE = (
    "MACs: one multiply-add = 1 MAC (the SE, CBAM and ECA papers call this a FLOP); convolutions, linears and "
    "matmuls as fvcore counts them, plus element-wise, reduction, pooling and normalisation work by the rules in "
    "the README; 'conv/linear GMACs' is the style-independent part alone."
)


MEMORY_NOTE = (
    "Memory: 'act.' counts the elements of every operator output that is a new tensor in one eval forward "
    "(views and in-place outputs allocate nothing and count 0), per image; 'conv/linear act.' is fvcore's own count "
    "(conv, linear, matmul outputs only). 'saved for backward' is the bytes of the tensors autograd saves in one "
    "training forward (saved-tensor hooks, each storage once, parameters and buffers excluded), per image."
)


TRAFFIC_NOTE = (
    "Traffic: 'MB moved' is the bytes every operator of one eval forward reads (its tensor arguments, weights "
    "included, each distinct element once) and writes (its outputs once), with no cache between operators; views "
    "move nothing, in-place operators write once (ShuffleNet V2's memory access cost; docs/cost-model.md). "
    "'operators' counts the aten calls at the dispatch level (views included), 'MACs/byte' is the arithmetic intensity."
)


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
    sizes = _distinct(
        f"{r.config['input_size'][0]}x{r.config['input_size'][1]}" for r in records if "input_size" in r.config
    )
    out = [f"input {sizes}"] if sizes else []
    built = _distinct(_options_text(r.config["backbone_options"]) for r in records if r.config.get("backbone_options"))
    if built:  # timm.create_model keywords every backbone was built with: part of what every number means
        out.append(f"backbones built with {built}")
    if any(spec(r.metric).kind == "count" for r in records):
        out.append("counts per image")
    timed = [r for r in records if spec(r.metric).kind in ("timing", "memory")]
    if timed:
        out.append(f"batch {_distinct(r.config.get('batch_size') for r in timed)} for timings")
        measured = [
            r.measurement.settings for r in timed if r.measurement is not None and "rounds" in r.measurement.settings
        ]
        out += [_protocol(s) for s in dict.fromkeys(_freeze(s) for s in measured)]
        runtimes = _distinct(r.config.get("runtime", "eager") for r in timed)
        out.append(f"runtime {runtimes}")
    text = "Settings: " + ", ".join(out) + "."
    if any(r.stats.get("schedule") == "alternating" for r in timed):
        batched = sorted({_batches(r) for r in timed if r.stats.get("schedule") == "alternating"} - {1})
        over = (
            f"t interval over {' / '.join(map(str, batched))} batch means of consecutive rounds (b-1 df; the host's "
            "drift over the run is in the interval)"
            if batched
            else "t interval over rounds (n-1 df)"
        )
        text += (
            " Δ latency [95% CI]: paired only between rows timed in one interleaved group: the variants alternate "
            "call by call; per round the median log ratio over call pairs in which neither call waited for a CPU "
            f"(more than its clean_wait share of thread time in the run queue); {over}, shown "
            "as %. Rows timed in different processes are marked (unpaired): Welch's t on each side's per-round log medians."
        )
    elif any(r.stats.get("rounds_ms") for r in timed):
        text += (
            " Δ latency [95% CI]: paired over the interleaved rounds: per round the ratio of the two medians, "
            "t interval on the mean log ratio (n-1 df), shown as %."
        )
    if any(r.stats.get("prepare_s") is not None for r in timed):
        text += (
            " 'setup s': export / compile / session creation (with the first, compiling call), timed apart and "
            "never inside the latency; each runtime's output was checked against eager before timing."
        )
    return text


def _options_text(options: dict) -> str:
    """{in_chans: 1, drop_rate: 0.1} as 'in_chans=1 drop_rate=0.1' (sorted: one text per set of options)."""
    return " ".join(
        f"{k}={json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}" for k, v in sorted(options.items())
    )


def _freeze(s: dict) -> tuple:
    return tuple(
        sorted(
            (k, str(s.get(k)))
            for k in (
                "rounds",
                "min_time",
                "warmup",
                "target",
                "max_time",
                "nice",
                "clean_wait",
                "amp",
                "channels_last",
                "schedule",
            )
        )
    )


def _protocol(frozen: tuple) -> str:
    """One timing protocol in words, from a record's measurement settings."""
    s = {k: (None if v == "None" else v) for k, v in frozen}
    extras = [k for k in ("amp", "channels_last") if s.get(k) not in (None, "False")]
    if s.get("schedule") != "alternating":
        text = f"{s['rounds']} interleaved rounds x >= {s['min_time']} s per variant, warm-up {s['warmup']}"
    else:
        text = (
            f"variants alternating call by call in rounds of >= {s['min_time']} s per variant, warm-up {s['warmup']}, "
            + (
                f"rounds added until every Δ's 95% half-width <= {s['target']} points or {s['max_time']} s of timing "
                f"(at least {s['rounds']} rounds)"
                if s.get("target")
                else f"{s['rounds']} rounds"
            )
            + (f", nice {s['nice']} asked" if s.get("nice") is not None else "")
        )
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
        at = f"{first.backbone} {first.metric}" + (
            f" @ {_axis_label(first.metric, record_point(first))}" if several else ""
        )
        out.append(TimingGroup(at, tuple(recs), first.stats.get("stop") or {}, first.stats.get("contention") or {}))
    return out


def contention_line(records: Sequence[Record]) -> str:
    """One line naming every timing group measured while other processes took the CPU and what it cannot support."""
    bad = [g for g in timing_groups(records) if g.unsupported]
    if not bad:
        return ""
    granted = all(g.machine.get("nice_granted") for g in bad)
    return (
        "contended: "
        + "; ".join(f"{g.at} ({_machine_text(g.machine)}): {g.what} of {', '.join(g.unsupported)}" for g in bad)
        + " not supported (timed while other processes took the CPU); rerun on idle cores"
        + ("" if granted else ", or as root so attnbench can raise its priority (latency.nice)")
    )


def group_widths(g: "TimingGroup") -> List[Tuple[str, float]]:
    """(label, 95% half-width) of each row the group stopped on. A Δ timed with batch means gets the interval its
    table cell shows, recomputed from the raw samples (a stop record written before it used batch means too held
    the interval over rounds); other rows keep what their stop record says, so older tables stay as they were."""
    base = next((r for r in g.records if r.label == r.stats.get("baseline")), None)
    out = []
    for r in g.records:
        if r.stats.get("baseline") == r.label:
            continue
        stop = r.stats.get("stop") or {}
        w = stop.get("halfwidth", stop.get("halfwidth_pct"))
        if base is not None and r.metric != "attention_cpu" and _batches(r) > 1:
            ci = delta_interval(r, base)
            w = ci.halfwidth if ci is not None else None
        if w is not None:
            out.append((r.label, w))
    return out


def needed_text(g: "TimingGroup", widest: float) -> str:
    """How much timing the target would take on this host, from what the group reached: a half-width shrinks as
    1/sqrt(timing), so T x (widest / target)^2 (an estimate: the host may change)."""
    seconds, target = g.stop.get("seconds") or 0, g.stop.get("target") or 0
    if not seconds or not target or widest <= target:
        return ""
    return (
        f"this host would need about {seconds * (widest / target) ** 2:.0f} s of timing for ±{target:g} "
        f"(latency.max_time), or accept ±{widest:.1f} (latency.target)"
    )


def precision_line(records: Sequence[Record]) -> str:
    """One line naming every timing group that stopped at its time budget before its precision target, with the
    half-width it reached and the time the target would take here: the table's precision, said plainly."""
    missed = []
    for g in timing_groups(records):
        if (
            g.stop.get("reason") != "max_time"
            or not g.stop.get("target")
            or g.unsupported
            or _batches(g.records[0]) <= 1
        ):
            continue
        widths = group_widths(g)
        if widths:
            lab, w = max(widths, key=lambda t: t[1])
            missed.append(
                f"{g.at}: ±{w:.2f} points ({lab}) after {g.stop.get('seconds') or 0:.0f} s; {needed_text(g, w)}"
            )
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
            notes.append(
                f"{CONTENDED} contended: {g.at}: {machine}; {g.what} of {', '.join(g.unsupported)} not supported "
                "(measured while other processes took the CPU, not comparable with a quiet run); rerun on idle cores"
                + (
                    ""
                    if g.machine.get("nice_granted")
                    else ", or as root so attnbench can raise its priority (latency.nice)"
                )
            )
            continue
        widths = group_widths(g)
        widest = max(widths, key=lambda t: t[1]) if widths else None
        reason, target = g.stop.get("reason"), g.stop.get("target")
        unit = "%" if g.records[0].metric == "attention_cpu" else " points"
        if reason in ("target met", "max_time") and target:
            done = (
                f"target ±{target:g}{unit} met"
                if reason == "target met"
                else f"time budget {g.stop.get('max_time'):g} s spent before target ±{target:g}{unit}"
            )
            notes.append(
                f"precision: {g.at}: {done} after {g.stop.get('rounds')} rounds ({g.stop.get('seconds') or 0:.0f} s)"
                + (f", widest ±{widest[1]:.2f}{unit} ({widest[0]})" if widest else "")
                + (
                    f"; {needed_text(g, widest[1])}"
                    if widest and reason == "max_time" and _batches(g.records[0]) > 1
                    else ""
                )
                + f"; {machine}"
            )
        elif (g.machine.get("others_cpu") or 0) >= 0.10:
            notes.append(f"busy machine: {g.at}: {machine}")
    return notes


def no_delta_note(g: "TimingGroup") -> str:
    """Why the rows of a timing group whose paired Δ cannot be computed show "not supported" ('' when every Δ
    could be): a paired Δ takes, per round, the median over at least MIN_PAIRS undisturbed call pairs, so
    rounds of fewer calls (a short ``min_time`` with ``min_iters`` below MIN_PAIRS) or calls that mostly waited
    for a CPU leave no round to take it from."""
    from ..core.stats import MIN_PAIRS

    base = next((r for r in g.records if r.label == r.stats.get("baseline")), None)
    if base is None:
        return ""
    lost = [
        r
        for r in g.records
        if r is not base and (lambda ci: ci is not None and ci.pct != ci.pct)(delta_interval(r, base))
    ]
    if not lost:
        return ""
    b = base.stats.get("rounds_ms") or []
    pairs = max((min(len(v), len(w)) for r in lost for v, w in zip(r.stats.get("rounds_ms") or [], b)), default=0)
    if pairs < MIN_PAIRS:
        why = (
            f"every round timed at most {pairs} call pair(s), fewer than the {MIN_PAIRS} a round needs for a paired Δ; "
            f"raise latency.min_iters to {MIN_PAIRS} or more (or latency.min_time)"
        )
    else:
        why = (
            f"no round had {MIN_PAIRS} undisturbed call pairs ({_machine_text(g.machine)}): other processes took the "
            "CPU; rerun on idle cores, or with more rounds"
        )
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
    from ..core.where import describe

    attach = next((c.attachment for c in cells.values() if c.attachment), None)
    return describe(attach) if attach else DASH


def unseen_state(cells: Dict[str, Record]) -> str:
    """Why a row's counts may mislead: state parameters() cannot see (recorded with every count: it
    deflates params and inflates saved-for-backward, where those weights count as activations), or no
    parameters but compute inside the attached module (parameter-free by design, or hidden state)."""
    hidden = next(
        (
            c
            for c in cells.values()
            if c.value is not None and c.stats.get("hidden_numel") and c.module not in ("none", "native")
        ),
        None,
    )
    if hidden is not None:
        saved = cells.get("train_memory")
        inflated = (
            "; 'saved for backward' counts them as activations"
            if saved is not None and saved.stats.get("hidden_numel")
            else ""
        )
        return (
            f"state parameters() cannot see: {hidden.stats['hidden_numel']:,} elements "
            f"({', '.join(hidden.stats['hidden_state'][:3])}){inflated}"
        )
    params, macs = cells.get("params"), cells.get("macs")
    if params is None or params.value is None or params.module in ("none", "native"):
        return ""
    if (
        params.stats.get("attention") == 0
        and macs is not None
        and macs.value is not None
        and macs.stats.get("attention")
    ):
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

    return (
        f"{TIMED_BY}N: the process that timed the row: "
        + "; ".join(f"{TIMED_BY}{n} {text(o)}" for o, n in origins.items())
        + ". Each timing group ran in one process; a Δ between rows of different processes is unpaired."
    )
