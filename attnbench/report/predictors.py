"""Which cost predicts latency: rank correlation and fits of Δlatency against each count, from records alone.

Pure functions of the records (no torch, no clock); ``attnbench report`` writes ``<suite>-predictors.md`` and
``<suite>-predictors.png`` when the counting records carry memory traffic (``bytes``) and some timing is there.

Samples: one per (backbone, module variant) with an ok timing and ok counts at the same input size.
- Whole network (``latency_cpu``, per runtime): y = the paired Δ ms vs the backbone's ``none`` row (the
  latency table's 'Δ ms', from the raw rounds, with its 95% interval as error bars); x = Δ of each count vs
  ``none``: MACs, parameters, bytes moved, operator calls.
- Modules alone (``attention_cpu``): y = the attached modules' own time (direct total ms); x = their own
  counts (the parts of each count inside the attached modules).
Per scope (runtime x backbone, and the backbones pooled) and predictor:
- Spearman's ρ (average ranks for ties) with a percentile bootstrap 95% interval: modules resampled with
  replacement, BOOTSTRAP resamples from a fixed seed (the report rebuilds the same bytes), resamples where x
  or y is constant dropped; no interval below MIN_INTERVAL samples.
- R² (1 - SS_res / SS_tot) of the least-squares line y = c + b·x, and its leave-one-out RMSE in ms.
- the two-variable roofline-style model y = a·MACs + b·bytes (no intercept: a module that adds nothing
  adds no time), least squares; its R² on the same definition, its leave-one-out RMSE, and ρ of its
  leave-one-out predictions (every sample predicted by a fit that never saw it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from ..core.metrics import SITES
from ..records.record import Record
from ..suite.model import Point
from .cells import contended, delta_ms, point_order, record_point
from .markdown import DASH, md_row, md_text
from .notes import environment_line

Floats = Union[Sequence[float], np.ndarray]  # a list of numbers or an array of them
BOOTSTRAP = 2000
SEED = 0
LEVEL = 0.95
MIN_SAMPLES = 3  # a fit with an intercept and a leave-one-out error needs three
MIN_INTERVAL = 5  # fewer modules than this give a bootstrap with too few distinct resamples: no interval
ROOFLINE = "a·MACs + b·bytes"


@dataclass(frozen=True)
class Predictor:
    name: str  # as the table shows it ('ΔMACs')
    unit: str  # unit of x after ``scale`` ('GMACs')
    scale: float
    delta: Callable[[Dict[str, Record]], Optional[float]]  # from a row's count records, the whole network's value
    own: Callable[[Dict[str, Record]], Optional[float]]  # the attached modules' own part


def _value(metric: str):
    return lambda cells: cells[metric].value if metric in cells else None


def _stat(metric: str, name: str):
    def get(cells):
        rec = cells.get(metric)
        v = rec.stats.get(name) if rec is not None else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return get


PREDICTORS = (
    Predictor("MACs", "GMACs", 1e9, _value("macs"), _stat("macs", "attention")),
    Predictor("params", "M params", 1e6, _value("params"), _stat("params", "attention")),
    Predictor("bytes", "MB", 1e6, _stat("macs", "bytes"), _stat("macs", "bytes_attention")),
    Predictor("operators", "operators", 1.0, _stat("macs", "operators"), _stat("macs", "operators_attention")),
)
BY_NAME = {p.name: p for p in PREDICTORS}


@dataclass(frozen=True)
class Sample:
    """One module on one backbone: its cost y (ms) with the interval, and its counts x (raw units)."""

    backbone: str
    label: str
    y: float
    low: Optional[float]
    high: Optional[float]
    x: Dict[str, Optional[float]] = field(default_factory=dict)


def _x(s: Sample, name: str) -> float:
    """A count the caller has checked is there (``s.x.get(name) is not None``)."""
    return cast(float, s.x[name])


def _below(s: Sample) -> float:
    """The error bar below the point, never negative (an edited interval)."""
    return max(0.0, s.y - s.low) if s.low is not None else 0.0


def _above(s: Sample) -> float:
    return max(0.0, s.high - s.y) if s.high is not None else 0.0


@dataclass(frozen=True)
class Fit:
    """One predictor (or the two-variable model) over one scope's samples."""

    predictor: str
    n: int
    rho: Optional[float]
    rho_low: Optional[float]
    rho_high: Optional[float]
    r2: Optional[float]
    coef: Tuple[float, ...]  # (c, b) of y = c + b·x; (a, b) of a·MACs + b·bytes; in ms per unit shown
    loo_rmse: Optional[float]


@dataclass(frozen=True)
class Scope:
    what: str  # 'latency_cpu' or 'attention_cpu'
    runtime: str  # the runtime (with size and batch when the records sweep them); 'eager' for the modules alone
    backbones: Tuple[str, ...]
    samples: Tuple[Sample, ...]
    fits: Tuple[Fit, ...]

    @property
    def label(self) -> str:
        return " + ".join(self.backbones)


# --- statistics --------------------------------------------------------------------------------------------


def ranks(v: Floats) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(v, dtype=float), method="average")


def _pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return None if den == 0 else float((a * b).sum() / den)


def spearman(x: Floats, y: Floats) -> Optional[float]:
    """Spearman's ρ: Pearson's r of the average ranks; None when x or y is constant."""
    if len(x) < 2:
        return None
    return _pearson(ranks(x), ranks(y))


def bootstrap_rho(
    xs: Floats, ys: Floats, n: int = BOOTSTRAP, seed: int = SEED, level: float = LEVEL
) -> Tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of Spearman's ρ over samples resampled with replacement."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) < MIN_INTERVAL:
        return None, None
    rng = np.random.default_rng(seed)
    rhos = []
    for idx in rng.integers(0, len(x), size=(n, len(x))):
        r = spearman(x[idx], y[idx])
        if r is not None:
            rhos.append(r)
    if len(rhos) < n / 2:  # mostly degenerate resamples: no honest interval
        return None, None
    lo, hi = np.quantile(rhos, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def least_squares(X: np.ndarray, y: np.ndarray) -> Optional[np.ndarray]:
    """Coefficients of min |X·c - y|²; None when X's columns are not independent (e.g. a constant x)."""
    if X.shape[0] < X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    return np.linalg.lstsq(X, y, rcond=None)[0]


def r_squared(y: np.ndarray, fitted: np.ndarray) -> Optional[float]:
    """1 - SS_res / SS_tot (centred: comparable between a line with intercept and a model without one)."""
    tot = float(((y - y.mean()) ** 2).sum())
    return None if tot == 0 else 1.0 - float(((y - fitted) ** 2).sum()) / tot


def loo_predictions(X: np.ndarray, y: np.ndarray) -> Optional[np.ndarray]:
    """Each sample predicted by the least-squares fit on all the others; None if some fit is undetermined."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c = least_squares(X[keep], y[keep])
        if c is None:
            return None
        out[i] = float(X[i] @ c)
    return out


def _fit(name: str, X: np.ndarray, y: np.ndarray, rank_by: Optional[np.ndarray]) -> Fit:
    """One model's row: ρ of ``rank_by`` (the predictor itself; None: the leave-one-out predictions) vs y."""
    n = len(y)
    c = least_squares(X, y) if n >= MIN_SAMPLES else None
    loo = loo_predictions(X, y) if c is not None else None
    rmse = None if loo is None else float(math.sqrt(((y - loo) ** 2).mean()))
    ranked = rank_by if rank_by is not None else loo
    rho = spearman(ranked, y) if ranked is not None and n >= MIN_SAMPLES else None
    lo, hi = bootstrap_rho(ranked, y) if rho is not None and ranked is not None else (None, None)
    return Fit(
        name,
        n,
        rho,
        lo,
        hi,
        None if c is None else r_squared(y, X @ c),
        () if c is None else tuple(float(v) for v in c),
        rmse,
    )


def fit_scope(samples: Sequence[Sample]) -> List[Fit]:
    """One row per predictor (the samples that have it), then the two-variable model (those that have both)."""
    fits = []
    for p in PREDICTORS:
        have = [s for s in samples if s.x.get(p.name) is not None]
        x = np.array([_x(s, p.name) / p.scale for s in have], dtype=float)
        y = np.array([s.y for s in have], dtype=float)
        fits.append(_fit(p.name, np.column_stack([np.ones(len(x)), x]), y, x))
    have = [s for s in samples if s.x.get("MACs") is not None and s.x.get("bytes") is not None]
    X = np.array(
        [[_x(s, "MACs") / BY_NAME["MACs"].scale, _x(s, "bytes") / BY_NAME["bytes"].scale] for s in have], dtype=float
    ).reshape(-1, 2)
    fits.append(_fit(ROOFLINE, X, np.array([s.y for s in have], dtype=float), None))
    return fits


# --- samples from records ---------------------------------------------------------------------------------


def _counts(records: Sequence[Record]) -> Dict[tuple, Dict[str, Record]]:
    """(backbone, label, input size) -> {params, macs} ok records."""
    out: Dict[tuple, Dict[str, Record]] = {}
    for r in records:
        if r.metric in ("params", "macs") and r.ok:
            out.setdefault((r.backbone, r.label, record_point(r).input_size), {})[r.metric] = r
    return out


def latency_samples(records: Sequence[Record], point: Point, backbone: str) -> Tuple[List[Sample], List[str]]:
    """Whole-network samples of one point (input size, batch, runtime) and backbone, and why any module was left out."""
    counts, left = _counts(records), []
    timed = [r for r in records if r.metric == "latency_cpu" and r.backbone == backbone and record_point(r) == point]
    base = next((r for r in timed if r.module == "none" and r.ok), None)
    samples = []
    for r in timed:
        if r.module == "none":
            continue
        why = _unusable(r, base)
        d = None if why or base is None else delta_ms(r, base)
        if d is not None and d.mean != d.mean:
            why = "no round had enough undisturbed call pairs"
        elif d is None and not why:
            why = "no Δ ms"
        if why:
            left.append(f"{backbone}/{r.label}: {why}")
            continue
        size = point.input_size
        mine, theirs = counts.get((backbone, r.label, size), {}), counts.get((backbone, "none", size), {})
        x = {}
        for pr in PREDICTORS:
            a, b = pr.delta(mine), pr.delta(theirs)
            x[pr.name] = None if a is None or b is None else a - b
        assert d is not None  # a missing Δ set why above
        samples.append(Sample(backbone, r.label, d.mean, d.low, d.high, x))
    return samples, left


def site_samples(records: Sequence[Record], backbone: str) -> Tuple[List[Sample], List[str]]:
    """Modules-alone samples of one backbone: direct total ms vs the modules' own counts."""
    counts, samples, left = _counts(records), [], []
    for r in records:
        if r.metric != SITES or r.backbone != backbone or r.module == "none":
            continue
        why = (
            (r.status_text() or "not ok")
            if not r.ok
            else "contended (timed while other processes took the CPU)"
            if contended(r)
            else ""
        )
        if why:
            left.append(f"{backbone}/{r.label} (alone): {why}")
            continue
        mine = counts.get((backbone, r.label, record_point(r).input_size), {})
        samples.append(
            Sample(
                backbone,
                r.label,
                float(r.value),  # type: ignore[arg-type]  # ok records have a value
                r.stats.get("low_ms"),
                r.stats.get("high_ms"),
                {p.name: p.own(mine) for p in PREDICTORS},
            )
        )
    return samples, left


def _unusable(rec: Record, base: Optional[Record]) -> str:
    if not rec.ok:
        return rec.status_text() or "not ok"
    if base is None:
        return "no ok `none` row timed with it"
    if contended(rec) or contended(base):
        return "contended (timed while other processes took the CPU)"
    return ""


def scopes(records: Sequence[Record]) -> Tuple[List[Scope], List[str]]:
    """Every scope the records allow: per runtime, each backbone and (with two or more) the backbones pooled;
    then the modules alone. Also every module left out, with why."""
    backbones = list(dict.fromkeys(r.backbone for r in sorted(records, key=lambda r: r.position)))
    points = sorted({record_point(r) for r in records if r.metric == "latency_cpu"}, key=point_order)
    several = len({(p.input_size, p.batch_size) for p in points}) > 1
    out, left = [], []

    def add(what, runtime, per_backbone):
        got = [(b, s) for b, s in per_backbone if s]
        for b, s in got:
            out.append(Scope(what, runtime, (b,), tuple(s), tuple(fit_scope(s))))
        if len(got) > 1:
            pooled = [x for _, s in got for x in s]
            out.append(Scope(what, runtime, tuple(b for b, _ in got), tuple(pooled), tuple(fit_scope(pooled))))

    for point in points:
        runtime = point.label if several else point.runtime  # a sweep's scopes name their size and batch too
        per = []
        for b in backbones:
            s, why = latency_samples(records, point, b)
            per.append((b, s))
            left += [f"{runtime}: {w}" for w in why]
        add("latency_cpu", runtime, per)
    per = []
    for b in backbones:
        s, why = site_samples(records, b)
        per.append((b, s))
        left += why
    add(SITES, "eager", per)
    return out, left


def applies(records: Sequence[Record]) -> bool:
    """Whether a store supports the table: counts with memory traffic and a timing of some module."""
    return any(r.metric == "macs" and r.ok and r.stats.get("bytes") is not None for r in records) and any(
        r.metric in ("latency_cpu", SITES) and r.ok and r.module != "none" for r in records
    )


# --- rendering ---------------------------------------------------------------------------------------------


def _num(v: Optional[float], digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def _coef(v: float) -> str:
    return f"{v:.3g}"


def _model_text(f: Fit, what: str) -> str:
    if not f.coef:
        return DASH
    y = "Δms" if what == "latency_cpu" else "ms"
    if f.predictor == ROOFLINE:
        return f"{y} = {_coef(f.coef[0])}·GMACs {_signed(f.coef[1])}·MB"
    c, b = f.coef
    return f"{y} = {_coef(c)} {_signed(b)}·{BY_NAME[f.predictor].unit}"


def _signed(v: float) -> str:
    return f"{'-' if v < 0 else '+'} {_coef(abs(v))}"


def _rho_text(f: Fit) -> str:
    if f.rho is None:
        return DASH
    return f"{f.rho:+.2f}" + ("" if f.rho_low is None else f" [{f.rho_low:+.2f}, {f.rho_high:+.2f}]")


def _predictor_label(name: str, what: str) -> str:
    if name == ROOFLINE:
        return ROOFLINE + (" (Δ)" if what == "latency_cpu" else " (own)")
    return ("Δ" if what == "latency_cpu" else "own ") + name


METHOD = (
    "Per scope, one sample per module variant. Spearman ρ: rank correlation (average ranks for ties) of the "
    "predictor with the cost, [95% percentile bootstrap over modules, {boot} resamples, seed {seed}; none below "
    "{mini} modules]; for `{roof}` ρ of its leave-one-out predictions. R²: 1 - SS_res/SS_tot of the "
    "least-squares line y = c + b·x (for `{roof}`: that model, no intercept, on the same definition). "
    "LOO RMSE: root mean square error, in ms, of each module predicted by the fit on all the others."
)


def render_predictors(records: Sequence[Record], title: str) -> str:
    """The predictor table: per scope, one row per predictor."""
    found, left = scopes(records)
    lines = [
        f"# {title}: which cost predicts latency",
        "",
        environment_line(records),
        METHOD.format(boot=BOOTSTRAP, seed=SEED, mini=MIN_INTERVAL, roof=ROOFLINE),
        "Counts: MACs (multiply-adds by the rules of the MACs table), parameters, bytes moved (each operator's reads "
        "and writes, no cache between operators: docs/cost-model.md) and operator calls at the dispatch level.",
        "",
    ]
    for what, heading, y in (
        ("latency_cpu", "Whole network: Δ CPU latency vs the Δ of each count", "Δ ms vs `none`"),
        (
            SITES,
            "Modules alone (attention_cpu): the modules' own time vs their own counts",
            "direct ms, the attached modules alone",
        ),
    ):
        mine = [s for s in found if s.what == what]
        if not mine:
            continue
        lines += [
            f"## {heading}",
            "",
            f"y = {y}.",
            "",
            md_row(
                [
                    "runtime",
                    "backbone",
                    "predictor",
                    "n",
                    "Spearman ρ [95% CI]",
                    "R²",
                    "least-squares fit",
                    "LOO RMSE ms",
                ]
            ),
            "|---|---|---|---:|---:|---:|---|---:|",
        ]
        for sc in mine:
            for f in sc.fits:
                lines.append(
                    md_row(
                        [
                            sc.runtime,
                            sc.label,
                            _predictor_label(f.predictor, what),
                            f.n,
                            _rho_text(f),
                            _num(f.r2, 3),
                            _model_text(f, what),
                            _num(f.loo_rmse, 3),
                        ]
                    )
                )
        lines.append("")
    if not found:
        lines += ["No scope has a timed module with its counts.", ""]
    if left:
        lines += ["Left out:", ""] + [f"- {md_text(w)}" for w in left] + [""]
    return "\n".join(lines)


def predictors_plot(records: Sequence[Record], path: Path) -> Optional[Path]:
    """Δlatency (or the modules' own time) vs each predictor, one row of panels per runtime (and one for the
    modules alone), error bars the 95% intervals, each backbone its marker, the scope's least-squares line (the
    backbones pooled where there are several)."""
    from .plots import _finish, _pyplot

    found, _ = scopes(records)
    rows = [sc for sc in found if len(sc.backbones) > 1] + [
        sc
        for sc in found
        if len(sc.backbones) == 1
        and not any(o.what == sc.what and o.runtime == sc.runtime and len(o.backbones) > 1 for o in found)
    ]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(rows), len(PREDICTORS) + 1, figsize=(4.4 * (len(PREDICTORS) + 1), 3.6 * len(rows)), squeeze=False
    )
    markers = "osD^v<>"
    for i, sc in enumerate(rows):
        fits = {f.predictor: f for f in sc.fits}
        for j, p in enumerate(PREDICTORS):
            ax = axes[i][j]
            for k, b in enumerate(sc.backbones):
                pts = [s for s in sc.samples if s.backbone == b and s.x.get(p.name) is not None]
                if not pts:
                    continue
                xs = [_x(s, p.name) / p.scale for s in pts]
                ys = [s.y for s in pts]
                err = [
                    [_below(s) for s in pts],
                    [_above(s) for s in pts],
                ]
                ax.errorbar(xs, ys, yerr=err, fmt=markers[k % len(markers)], ms=4, capsize=2, label=b)
                for s, x in zip(pts, xs):
                    ax.annotate(s.label, (x, s.y), textcoords="offset points", xytext=(3, 2), fontsize=6)
            f = fits.get(p.name)
            if f is not None and f.coef:
                xs = [_x(s, p.name) / p.scale for s in sc.samples if s.x.get(p.name) is not None]
                line = np.linspace(min(xs), max(xs), 2)
                ax.plot(line, f.coef[0] + f.coef[1] * line, "--", color="grey", lw=1)
            rho = DASH if f is None or f.rho is None else f"{f.rho:+.2f}"
            r2 = DASH if f is None or f.r2 is None else f"{f.r2:.2f}"
            ax.set_title(f"{sc.runtime if sc.what == 'latency_cpu' else 'modules alone'}: ρ {rho}, R² {r2}", fontsize=9)
            ax.set_xlabel(_predictor_label(p.name, sc.what) + f" ({p.unit})")
            ax.set_ylabel("Δ latency, ms" if sc.what == "latency_cpu" else "direct ms (modules alone)")
            ax.axhline(0, color="grey", lw=0.6)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        _roofline_panel(axes[i][len(PREDICTORS)], sc, fits.get(ROOFLINE), markers)
    return _finish(
        plt,
        fig,
        f"{records[0].suite}: cost vs each count (error bars: 95% CI; dashed: least-squares line)",
        path,
        dpi=100,
    )


def _roofline_panel(ax, sc: Scope, fit: Optional[Fit], markers: str) -> None:
    """The two-variable model: each module's cost against its leave-one-out prediction, with the y = x line."""
    have = [s for s in sc.samples if s.x.get("MACs") is not None and s.x.get("bytes") is not None]
    X = np.array(
        [[_x(s, "MACs") / BY_NAME["MACs"].scale, _x(s, "bytes") / BY_NAME["bytes"].scale] for s in have], dtype=float
    ).reshape(-1, 2)
    pred = loo_predictions(X, np.array([s.y for s in have], dtype=float)) if len(have) >= MIN_SAMPLES else None
    if pred is None:
        ax.set_axis_off()
        return
    for k, b in enumerate(sc.backbones):
        idx = [i for i, s in enumerate(have) if s.backbone == b]
        ax.errorbar(
            [pred[i] for i in idx],
            [have[i].y for i in idx],
            fmt=markers[k % len(markers)],
            ms=4,
            capsize=2,
            label=b,
            yerr=[
                [_below(have[i]) for i in idx],
                [_above(have[i]) for i in idx],
            ],
        )
        for i in idx:
            ax.annotate(have[i].label, (pred[i], have[i].y), textcoords="offset points", xytext=(3, 2), fontsize=6)
    lo, hi = min(min(pred), min(s.y for s in have)), max(max(pred), max(s.y for s in have))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
    rho = DASH if fit is None or fit.rho is None else f"{fit.rho:+.2f}"
    r2 = DASH if fit is None or fit.r2 is None else f"{fit.r2:.2f}"
    ax.set_title(f"{ROOFLINE}: ρ {rho}, R² {r2}", fontsize=9)
    ax.set_xlabel("leave-one-out prediction, ms")
    ax.set_ylabel("measured, ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
