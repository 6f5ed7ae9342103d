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
from typing import Optional, Sequence, Tuple

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
    return (qa + qb) ** 2 / (qa ** 2 / (na - 1) + qb ** 2 / (nb - 1))


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
# Δlatency % of a variant against its baseline, from the paired, interleaved rounds of one timing group:
#   m_r(v) = median of variant v's calls in round r; d_r = ln m_r(v) - ln m_r(base)   (r = 1..n)
#   Δ% = 100·(exp(mean d) - 1), 95% interval 100·(exp(mean d ± t(0.975, n-1)·sd(d)/√n) - 1).
# Rounds pair the variants: within a round they run back to back, so drift between rounds cancels.
# Logs make the ratio symmetric and the interval multiplicative. Between two runs (``compare``) no
# pairing exists: Welch's interval on the per-round log medians of each run instead.


@dataclass(frozen=True)
class RatioInterval:
    """Δ% of a ratio with its 95% interval (low/high None when there are too few rounds)."""

    pct: float
    low: Optional[float]
    high: Optional[float]
    n: int
    method: str

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def round_medians(rounds: Sequence[Sequence[float]]) -> list:
    return [statistics.median(r) for r in rounds if len(r)]


def _pct(log_ratio: float) -> float:
    return 100.0 * math.expm1(log_ratio)


def paired_ratio_interval(variant_rounds: Sequence[Sequence[float]], base_rounds: Sequence[Sequence[float]],
                          level: float = LEVEL) -> Optional[RatioInterval]:
    """Δ% of variant vs baseline from rounds paired by index; None when there is no round to pair."""
    mv, mb = round_medians(variant_rounds), round_medians(base_rounds)
    n = min(len(mv), len(mb))
    if n == 0 or any(v <= 0 for v in mv[:n] + mb[:n]):
        return None
    d = [math.log(a) - math.log(b) for a, b in zip(mv[:n], mb[:n])]
    mean = statistics.fmean(d)
    if n < 2:
        return RatioInterval(_pct(mean), None, None, n, "paired rounds (1 round: no interval)")
    half = t_quantile(1 - (1 - level) / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return RatioInterval(_pct(mean), _pct(mean - half), _pct(mean + half), n,
                         f"paired t on per-round log ratios of medians, {n} rounds")


def unpaired_ratio_interval(b_rounds: Sequence[Sequence[float]], a_rounds: Sequence[Sequence[float]],
                            level: float = LEVEL) -> Optional[RatioInterval]:
    """Δ% of run B vs run A (B/A - 1) from each run's per-round medians: Welch's t on their logs."""
    lb = [math.log(v) for v in round_medians(b_rounds) if v > 0]
    la = [math.log(v) for v in round_medians(a_rounds) if v > 0]
    if not lb or not la:
        return None
    c = welch(lb, la, level)
    if c.low is None:
        return RatioInterval(_pct(c.diff), None, None, min(len(lb), len(la)), "Welch on per-round log medians (< 2 rounds: no interval)")
    return RatioInterval(_pct(c.diff), _pct(c.low), _pct(c.high), min(len(lb), len(la)), "Welch t on per-round log medians")
