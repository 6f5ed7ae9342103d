"""What a handful of seeds can support: Welch intervals, verdicts, detectable differences, convergence.

Methods (stated under every accuracy table):
- Δ = mean(module) - mean(baseline) over seeds, with a Welch's t 95% interval:
  se = sqrt(s1²/n1 + s2²/n2), Welch-Satterthwaite df = se⁴ / ((s1²/n1)²/(n1-1) + (s2²/n2)²/(n2-1)),
  Δ ± t(0.975, df)·se. Welch, not a bootstrap: with 3 seeds a bootstrap has only 10 distinct resamples.
- verdict: better / worse when the interval excludes 0, else "no detectable difference".
- MDD (minimal detectable difference) at 80% power, two-sided α = 0.05, for the spread observed:
  (t(0.975, df) + t(0.80, df))·se — the smallest true Δ these seeds would call better/worse 4 times in 5.
- convergence: the baseline's mean test top-1 rose by more than CONVERGED_PP in its last epoch
  -> "not converged: Δ describes this budget".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, cast

LEVEL = 0.95
POWER = 0.80
CONVERGED_PP = 0.5  # pp of mean test top-1 gained in the last epoch above which a budget is "not converged"
NOT_CONVERGED = "not converged: Δ describes this budget"


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (scipy, a scikit-learn dependency); df may be fractional (Welch)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Comparison:
    """Δ of means (a - b) with its interval; low/high/mdd are None when a side has fewer than 2 seeds."""

    diff: float
    low: Optional[float]
    high: Optional[float]
    df: Optional[float]
    se: Optional[float]
    mdd: Optional[float]

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


def welch_df(va: float, na: int, vb: float, nb: int) -> float:
    """Welch-Satterthwaite degrees of freedom; n1 + n2 - 2 when both spreads are zero."""
    qa, qb = va / na, vb / nb
    if qa + qb == 0:
        return float(na + nb - 2)
    return (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))


def minimal_detectable(se: float, df: float, level: float = LEVEL, power: float = POWER) -> float:
    """(t(1 - α/2, df) + t(power, df))·se: the normal-approximation power formula with t quantiles."""
    return (t_quantile(1 - (1 - level) / 2, df) + t_quantile(power, df)) * se


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison:
    """Welch's t interval of mean(a) - mean(b), and the MDD at POWER for the same spread."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, None, None, None, None, None)
    va, vb = statistics.variance(a), statistics.variance(b)
    se = math.sqrt(va / len(a) + vb / len(b))
    df = welch_df(va, len(a), vb, len(b))
    half = t_quantile(1 - (1 - level) / 2, df) * se
    return Comparison(diff, diff - half, diff + half, df, se, minimal_detectable(se, df, level))


def verdict(low: Optional[float], high: Optional[float]) -> str:
    if low is None or high is None:
        return "n/a (< 2 seeds)"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"


def last_epoch_gain(mean_curve: Sequence[float]) -> Optional[float]:
    """Mean top-1 gained in the last epoch (pp); None with a single epoch (nothing to compare)."""
    return mean_curve[-1] - mean_curve[-2] if len(mean_curve) >= 2 else None


def convergence(mean_curve: Sequence[float], threshold: float = CONVERGED_PP) -> Tuple[Optional[bool], Optional[float]]:
    """(converged?, last-epoch gain): None when one epoch cannot tell."""
    gain = last_epoch_gain(mean_curve)
    return (None if gain is None else gain <= threshold), gain


# --- Timing intervals ---------------------------------------------------------------------------
# Schedule (attnbench.measures.timing): within a round the variants of a timing group alternate call by
# call (A B C, B C A, ...), so call i of every variant belongs to cycle i of the round and sits within
# a few tens of ms of the others: drift of the machine's speed hits the pair alike. Each call also
# carries the fraction of its threads' time spent waiting for a CPU (``rounds_wait``); a call above
# CLEAN_WAIT was preempted by another process and is left out of every Δ.
#   d_ri = ln t_ri(v) - ln t_ri(base) over the cycles i of round r where both calls are clean
#   m_r  = median_i d_ri (rounds with >= MIN_PAIRS clean pairs)                 (robust within a round)
#   Δ%   = 100·(exp(mean_r m_r) - 1), 95% interval 100·(exp(mean m ± t(0.975, df)·se) - 1), where
#          records with ``stats.batches`` = B (since 0.2): se over b = min(B, n // 2) batch means of consecutive
#          rounds, df = b - 1 (batch_interval); older records: se = sd(m)/√n over rounds, df = n - 1.
# The interval runs over rounds (or batches of them), not calls: calls within a few seconds share the machine's
# state. Rounds seconds apart still do (the host drifts over tens of seconds), so a t over rounds was too narrow
# for the next run's point; batch means spanning the whole run carry that drift (docs/latency.md).
# Records from before (block schedule, no ``schedule`` stat): per round the ratio of the two medians.
# Between runs (``compare``, or two rows from different processes) no pairing exists: Welch's t on each
# run's per-round log medians of clean calls, labelled unpaired.

CLEAN_WAIT = 0.02  # a call whose threads waited for a CPU more than 2% of their time was disturbed
MIN_PAIRS = 3  # clean pairs a round needs to contribute to a Δ


@dataclass(frozen=True)
class RatioInterval:
    """Δ% of a ratio with its 95% interval (low/high None when there are too few rounds)."""

    pct: float
    low: Optional[float]
    high: Optional[float]
    n: int
    method: str
    paired: bool = True
    clean: Optional[float] = None  # fraction of the pairs (or calls) that were undisturbed and used

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def halfwidth(self) -> Optional[float]:
        """The larger side of the interval, in percentage points (the log interval is not symmetric in %)."""
        return None if self.low is None or self.high is None else max(self.high - self.pct, self.pct - self.low)


def round_medians(rounds: Sequence[Sequence[float]]) -> list:
    return [statistics.median(r) for r in rounds if len(r)]


def _pct(log_ratio: float) -> float:
    return 100.0 * math.expm1(log_ratio)


def clean_calls(
    times: Sequence[float], waits: Optional[Sequence[Optional[float]]], limit: float = CLEAN_WAIT
) -> List[bool]:
    """Which calls of a round were undisturbed: all of them where no wait was measured."""
    if not waits:
        return [True] * len(times)
    return [w is None or w <= limit for w in list(waits)[: len(times)]] + [True] * max(0, len(times) - len(waits))


def _t_interval(values: Sequence[float], level: float) -> Tuple[float, Optional[float]]:
    """(mean, half-width) of a t interval over ``values``; half-width None with fewer than 2."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(1 - (1 - level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def batch_interval(
    values: Sequence[float], batches: int = 1, level: float = LEVEL
) -> Tuple[float, Optional[float], int]:
    """(mean, half-width, batches used) of a 95% interval for the mean of a series of rounds in time order.

    ``batches`` <= 1: a t interval over the rounds, each taken as independent (records from before batching).
    ``batches`` = B: batch means -- the rounds cut into b = min(B, n // 2) runs of consecutive rounds (the last
    batch takes the remainder), a t interval over the b batch means (b - 1 df). Rounds seconds apart share the
    machine's state (its speed and what other tenants do drift over tens of seconds), so their spread understates
    how far the next run lands; the spread of means of batches spanning the whole run carries that drift
    (measured in docs/latency.md: coverage across fresh runs rose from 68% to the nominal ~83%). Fewer than 4
    rounds fall back to the t over rounds."""
    n = len(values)
    b = min(int(batches), n // 2)
    if b < 2:
        mean, half = _t_interval(values, level)
        return mean, half, 0
    size = n // b
    means = [statistics.fmean(values[i * size : (i + 1) * size if i < b - 1 else n]) for i in range(b)]
    mean = statistics.fmean(values)
    return mean, t_quantile(1 - (1 - level) / 2, b - 1) * statistics.stdev(means) / math.sqrt(b), b


def mean_interval(
    values: Sequence[float], level: float = LEVEL, batches: int = 1
) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(mean, low, high) of an interval over ``values`` (rounds in time order; ``batches``: see batch_interval):
    (None, None, None) without values, no bounds with one."""
    if not values:
        return None, None, None
    mean, half, _ = batch_interval(values, batches, level)
    return (mean, None, None) if half is None else (mean, mean - half, mean + half)


def paired_round_values(
    v_rounds,
    b_rounds,
    v_waits=None,
    b_waits=None,
    limit: float = CLEAN_WAIT,
    diff=lambda a, b: math.log(a) - math.log(b),
) -> Tuple[List[float], int, int]:
    """Per round, the median of ``diff`` over its clean, index-paired calls (rounds with fewer than
    MIN_PAIRS clean pairs are left out); also (pairs seen, clean pairs used)."""
    values, seen, used = [], 0, 0
    for r, (tv, tb) in enumerate(zip(v_rounds, b_rounds)):
        n = min(len(tv), len(tb))
        cv = clean_calls(tv, (v_waits or [])[r] if v_waits and r < len(v_waits) else None, limit)
        cb = clean_calls(tb, (b_waits or [])[r] if b_waits and r < len(b_waits) else None, limit)
        d = [diff(tv[i], tb[i]) for i in range(n) if cv[i] and cb[i] and tv[i] > 0 and tb[i] > 0]
        seen += n
        used += len(d)
        if len(d) >= MIN_PAIRS:
            values.append(statistics.median(d))
    return values, seen, used


def alternating_delta(
    v_rounds, b_rounds, v_waits=None, b_waits=None, limit: float = CLEAN_WAIT, level: float = LEVEL, batches: int = 1
) -> Optional[RatioInterval]:
    """Δ% of variant vs baseline timed in one interleaved group (see the comment above; ``batches``: the interval
    over batch means of consecutive rounds, see batch_interval)."""
    values, seen, used = paired_round_values(v_rounds, b_rounds, v_waits, b_waits, limit)
    clean = used / seen if seen else None
    if not values:
        return (
            None
            if not seen
            else RatioInterval(float("nan"), None, None, 0, "no round with enough undisturbed pairs", True, clean)
        )
    mean, half, b = batch_interval(values, batches, level)
    method = (
        f"paired, interleaved call by call: t over {b} batch means of {len(values)} rounds' median log ratios"
        if b
        else f"paired, interleaved call by call: t over {len(values)} rounds of per-round median log ratios"
    )
    if half is None:
        return RatioInterval(_pct(mean), None, None, 1, method + " (1 round: no interval)", True, clean)
    return RatioInterval(_pct(mean), _pct(mean - half), _pct(mean + half), len(values), method, True, clean)


class Difference(NamedTuple):
    """An added time (variant - baseline) with its 95% interval; ``paired``: from one interleaved group."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    rounds: int = 0
    paired: bool = True


def alternating_difference(
    v_rounds, b_rounds, v_waits=None, b_waits=None, limit: float = CLEAN_WAIT, level: float = LEVEL, batches: int = 1
) -> Optional[Difference]:
    """Added time (variant - baseline, in the samples' unit) with its interval over rounds (or their batch means)."""
    values, _, _ = paired_round_values(v_rounds, b_rounds, v_waits, b_waits, limit, diff=lambda a, b: a - b)
    if not values:
        return None
    mean, low, high = mean_interval(values, level, batches)
    return Difference(cast(float, mean), low, high, len(values))  # values is not empty: the mean exists


def paired_ratio_interval(
    variant_rounds: Sequence[Sequence[float]], base_rounds: Sequence[Sequence[float]], level: float = LEVEL
) -> Optional[RatioInterval]:
    """Records from the block schedule: Δ% from rounds paired by index, per round the ratio of the two medians."""
    mv, mb = round_medians(variant_rounds), round_medians(base_rounds)
    n = min(len(mv), len(mb))
    if n == 0 or any(v <= 0 for v in mv[:n] + mb[:n]):
        return None
    d = [math.log(a) - math.log(b) for a, b in zip(mv[:n], mb[:n])]
    mean, half = _t_interval(d, level)
    if half is None:
        return RatioInterval(_pct(mean), None, None, n, "paired rounds (1 round: no interval)")
    return RatioInterval(
        _pct(mean), _pct(mean - half), _pct(mean + half), n, f"paired t on per-round log ratios of medians, {n} rounds"
    )


def clean_round_medians(rounds, waits=None, limit: float = CLEAN_WAIT) -> List[float]:
    """Per round, the median of its undisturbed calls (rounds with none are left out)."""
    out = []
    for r, times in enumerate(rounds):
        flags = clean_calls(times, waits[r] if waits and r < len(waits) else None, limit)
        kept = [t for t, ok in zip(times, flags) if ok and t > 0]
        if kept:
            out.append(statistics.median(kept))
    return out


def unpaired_ratio_interval(
    b_rounds: Sequence[Sequence[float]],
    a_rounds: Sequence[Sequence[float]],
    level: float = LEVEL,
    b_waits=None,
    a_waits=None,
) -> Optional[RatioInterval]:
    """Δ% of B vs A (B/A - 1) timed apart (two runs, or two processes): Welch's t on each side's per-round
    log medians of undisturbed calls. Not paired, so drift between the two shows up as a wider band."""
    lb = [math.log(v) for v in clean_round_medians(b_rounds, b_waits)]
    la = [math.log(v) for v in clean_round_medians(a_rounds, a_waits)]
    if not lb or not la:
        return None
    c = welch(lb, la, level)
    if c.low is None:
        return RatioInterval(
            _pct(c.diff),
            None,
            None,
            min(len(lb), len(la)),
            "unpaired: Welch on per-round log medians (< 2 rounds: no interval)",
            False,
        )
    return RatioInterval(
        _pct(c.diff),
        _pct(c.low),
        _pct(c.high),  # type: ignore[arg-type]  # set whenever low is
        min(len(lb), len(la)),
        "unpaired: Welch t on per-round log medians",
        False,
    )


def own_precision(
    rounds, waits=None, limit: float = CLEAN_WAIT, level: float = LEVEL, batches: int = 1
) -> Optional[float]:
    """Half-width in points of one variant's own per-round log medians (the stop rule without a baseline)."""
    logs = [math.log(v) for v in clean_round_medians(rounds, waits, limit)]
    mean, half, _ = batch_interval(logs, batches, level) if logs else (0.0, None, 0)
    return None if half is None else max(_pct(half), -_pct(-half))
