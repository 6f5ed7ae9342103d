"""Compare Δ-latency estimators offline on raw traces (benchmarks/latency_trace.py), as fresh runs would see them.

A "run" is a window of the trace: it starts where a fresh process would start, takes rounds of ``round_s`` seconds
per variant until its stop rule fires (target half-width or budget), and reports each Δ with its interval by the
estimator under test. Coverage is the share of ordered pairs of disjoint windows (i, j) where window i's point lies
in window j's interval: about 83% for correct 95% intervals of equal width. Traces recorded in several processes
one after another are concatenated in time order, so windows also cross process boundaries.

    python benchmarks/latency_windows.py /tmp/trace-r50-*.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnbench.core.stats import CLEAN_WAIT, MIN_PAIRS, t_quantile  # noqa: E402


def load(paths):
    """(labels, calls: list of (t, label index, seconds, wait)) over every trace, processes laid end to end."""
    labels, calls, offset = None, [], 0.0
    for path in sorted(paths):
        d = json.loads(Path(path).read_text())
        labels = labels or d["labels"]
        assert d["labels"] == labels
        part = [(t + offset, i, s, w) for t, i, s, w in d["calls"]]
        calls += part
        offset = part[-1][0] + part[-1][2] + 10.0  # a fresh process starts ~10 s later (imports)
    return labels, calls


def cycles(calls, n):
    """Complete cycles (every variant once, consecutively): [(t_start, {label: (seconds, wait)})]."""
    out, cur, t0 = [], {}, None
    for t, i, s, w in calls:
        if not cur:
            t0 = t
        cur[i] = (s, w)
        if len(cur) == n:
            out.append((t0, cur))
            cur = {}
    return out


def round_values(cyc, base, var, limit=CLEAN_WAIT):
    """Median over a round's clean pairs of ln(t_var / t_base); None with fewer than MIN_PAIRS."""
    d = [
        math.log(c[var][0] / c[base][0])
        for _, c in cyc
        if (c[var][1] is None or c[var][1] <= limit) and (c[base][1] is None or c[base][1] <= limit)
    ]
    return statistics.median(d) if len(d) >= MIN_PAIRS else None


def t_interval(values):
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    return m, t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def batch_interval(values, batches):
    """Batch means: consecutive rounds in ``batches`` groups, t over group means (df = batches - 1)."""
    k = len(values) // batches
    if k < 1 or batches < 2:
        return t_interval(values)
    means = [statistics.fmean(values[b * k : (b + 1) * k]) for b in range(batches)]
    return statistics.fmean(values), t_quantile(0.975, batches - 1) * statistics.stdev(means) / math.sqrt(batches)


def hac_interval(values, lag=None):
    """Newey-West (Bartlett) long-run variance of the mean, t with n-1 df."""
    n = len(values)
    if n < 3:
        return t_interval(values)
    m = statistics.fmean(values)
    x = [v - m for v in values]
    lag = lag if lag is not None else max(1, int(4 * (n / 100) ** (2 / 9)))
    g0 = sum(v * v for v in x) / n
    s = g0 + 2 * sum((1 - l / (lag + 1)) * sum(x[i] * x[i - l] for i in range(l, n)) / n for l in range(1, lag + 1))
    se = math.sqrt(max(s, g0 / n) / n) if s > 0 else math.sqrt(g0 / n)
    return m, t_quantile(0.975, n - 1) * se


ESTIMATORS = {
    "t over rounds": lambda v: t_interval(v),
    "batch means x4": lambda v: batch_interval(v, 4),
    "batch means x5": lambda v: batch_interval(v, 5),
    "batch means x8": lambda v: batch_interval(v, 8),
    "newey-west": lambda v: hac_interval(v),
}


def run_window(cyc, t_start, labels, round_s, target, budget, min_rounds, estimator):
    """One simulated run from t_start: rounds of round_s * len(labels) s; stop when every Δ's half-width (points)
    <= target after min_rounds, or at the budget. Returns ({var: (pct, lo, hi)}, seconds used)."""
    per_round = round_s * len(labels)
    i = next((k for k, (t, _) in enumerate(cyc) if t >= t_start), None)
    if i is None:
        return None, 0
    rounds, t0 = [], cyc[i][0]
    vals = {v: [] for v in range(1, len(labels))}
    while i < len(cyc):
        end = cyc[i][0] + per_round
        chunk = []
        while i < len(cyc) and (cyc[i][0] < end or len(chunk) < 3):
            chunk.append(cyc[i])
            i += 1
        rounds.append(chunk)
        for v in vals:
            x = round_values(chunk, 0, v)
            if x is not None:
                vals[v].append(x)
        used = (chunk[-1][0] - t0) if chunk else 0
        if len(rounds) >= min_rounds:
            widths = []
            for v in vals:
                if len(vals[v]) < 2:
                    widths.append(math.inf)
                    continue
                m, h = estimator(vals[v])
                widths.append(100 * max(math.expm1(m + h) - math.expm1(m), math.expm1(m) - math.expm1(m - h)))
            if target is not None and all(w <= target for w in widths):
                break
        if used >= budget:
            break
    out = {}
    for v, x in vals.items():
        if len(x) < 2:
            continue
        m, h = estimator(x)
        out[labels[v]] = (100 * math.expm1(m), 100 * math.expm1(m - h), 100 * math.expm1(m + h))
    return out, used


def coverage(runs, key):
    pts = [r[key] for r in runs if key in r]
    hits = pairs = 0
    for i, (p, _, _) in enumerate(pts):
        for j, (_, lo, hi) in enumerate(pts):
            if i != j:
                pairs += 1
                hits += lo <= p <= hi
    return hits, pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--round-s", type=float, nargs="+", default=[0.25])
    ap.add_argument("--budget", type=float, nargs="+", default=[30.0])
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--min-rounds", type=int, default=10)
    ap.add_argument("--spacing", type=float, default=None, help="seconds between window starts (default: the budget)")
    a = ap.parse_args()
    labels, calls = load(a.traces)
    cyc = cycles(calls, len(labels))
    span = cyc[-1][0] - cyc[0][0]
    print(
        f"{len(cyc)} cycles over {span:.0f} s; medians ms: "
        + ", ".join(f"{lab} {1e3 * statistics.median(c[i][0] for _, c in cyc):.2f}" for i, lab in enumerate(labels))
    )
    for round_s, budget, (name, est) in itertools.product(a.round_s, a.budget, ESTIMATORS.items()):
        spacing = a.spacing or budget
        runs, used = [], []
        t = cyc[0][0]
        while t + budget <= cyc[-1][0]:
            r, u = run_window(cyc, t, labels, round_s, a.target, budget, a.min_rounds, est)
            if r:
                runs.append(r)
                used.append(u)
            t += max(spacing, u + 1)
        keys = labels[1:]
        cov = [coverage(runs, k) for k in keys]
        hw = statistics.median((hi - lo) / 2 for r in runs for (p, lo, hi) in r.values())
        sd = statistics.fmean(statistics.stdev([r[k][0] for r in runs if k in r]) for k in keys)
        hits, pairs = sum(c[0] for c in cov), sum(c[1] for c in cov)
        print(
            f"round {round_s:.2f}s budget {budget:>4.0f}s {name:>15}: {len(runs):>2} runs, mean {statistics.fmean(used):4.0f} s; "
            f"coverage {100 * hits / max(1, pairs):3.0f}% ("
            + ", ".join(f"{k} {100 * h / max(1, p):.0f}%" for k, (h, p) in zip(keys, cov))
            + f"); median half-width {hw:.2f}; sd between runs {sd:.2f}"
        )


if __name__ == "__main__":
    main()
