"""Δlatency intervals: the paired-rounds method on a worked example, tables that show it, compare's noise
band and --fail-above."""

import math

import pytest

from attnbench.core.stats import paired_ratio_interval, unpaired_ratio_interval
from attnbench.records.measurement import Measurement
from attnbench.records.record import Record
from attnbench.records.store import Store
from attnbench.report import render_markdown
from attnbench.report.compare import compare_rows

T_975_DF2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom (printed tables)


def test_paired_interval_worked_by_hand():
    # Round medians: variant 11, 12, 11.5 ms; baseline 10, 10.5, 10 ms (the samples around them are noise).
    variant = [[10.9, 11.0, 11.2], [12.0, 11.9, 12.3], [11.5]]
    base = [[10.0, 9.9, 10.1], [10.5, 10.4, 10.6], [10.0]]
    d = [math.log(11 / 10), math.log(12 / 10.5), math.log(11.5 / 10)]  # 0.09531, 0.13353, 0.13976
    mean = sum(d) / 3  # 0.12287
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)  # 0.02407
    half = T_975_DF2 * sd / math.sqrt(3)  # 0.05979
    ci = paired_ratio_interval(variant, base)
    assert ci.n == 3
    assert ci.pct == pytest.approx(13.0735, abs=1e-3) and ci.pct == pytest.approx(100 * (math.exp(mean) - 1))
    assert ci.low == pytest.approx(6.511, abs=1e-3) and ci.low == pytest.approx(
        100 * (math.exp(mean - half) - 1), rel=1e-5
    )
    assert ci.high == pytest.approx(20.040, abs=1e-3) and ci.high == pytest.approx(
        100 * (math.exp(mean + half) - 1), rel=1e-5
    )
    assert ci.excludes_zero()


def test_one_round_gives_no_interval_and_pairing_matters():
    assert paired_ratio_interval([[2.0]], [[1.0]]).low is None
    # The same per-round medians unpaired (two runs) give a wider band than paired rounds that drift together.
    v, b = [[11], [12], [11.5]], [[10], [10.5], [10]]
    paired, unpaired = paired_ratio_interval(v, b), unpaired_ratio_interval(v, b)
    assert paired.pct == pytest.approx(unpaired.pct)
    assert unpaired.high - unpaired.low > paired.high - paired.low


def timing(label, rounds, position, suite="t", size=224):
    flat = sorted(t for r in rounds for t in r)
    med = flat[len(flat) // 2]
    return Record(
        key=f"{label}-{size}-{suite}",
        suite=suite,
        backbone="resnet50",
        label=label,
        module=label,
        metric="latency_cpu",
        position=(0, position),
        config={"input_size": [size, size], "batch_size": 1},
        status="ok",
        measurement=Measurement(
            "latency_cpu",
            med,
            "ms",
            "test",
            {"rounds": len(rounds), "min_time": 0.1, "warmup": 1},
            {"median_ms": med, "iqr_ms": 0.1, "images_per_s": 1e3 / med, "rounds_ms": rounds},
        ),
    )


def test_table_shows_delta_with_interval():
    md = render_markdown([timing("none", [[10.0], [10.5], [10.0]], 0), timing("se", [[11.0], [12.0], [11.5]], 1)])
    row = next(ln for ln in md.splitlines() if ln.startswith("| resnet50 | se"))
    assert "+13.07% [+6.5, +20.0]" in row
    assert "paired over the interleaved rounds" in md


def test_a_sweep_gets_a_pivot_and_a_table_per_point():
    recs = [
        timing("none", [[10.0], [10.5], [10.0]], 0),
        timing("se", [[11.0], [12.0], [11.5]], 1),
        timing("none", [[40.0], [40.0], [40.0]], 0, size=448),
        timing("se", [[42.0], [42.0], [42.0]], 1, size=448),
    ]
    md = render_markdown(recs)
    assert "## 224x224 b1 eager" in md and "## 448x448 b1 eager" in md
    pivot = md.split("## Across the sweep")[1].split("## 224x224")[0]
    assert "| backbone | module | 224x224 b1 eager | 448x448 b1 eager |" in pivot
    assert "| resnet50 | se | +13.07% [+6.5, +20.0] | +5.00% [+5.0, +5.0] |" in pivot


def write_store(path, records):
    Store(path).extend(records)
    return str(path)


def test_compare_noise_band_and_fail_above(tmp_path):
    from typer.testing import CliRunner

    from attnbench.cli import app

    a = [timing("none", [[10.0, 10.1], [10.2, 10.1], [10.0, 9.9], [10.1, 10.0]], 0)]
    slower = [timing("none", [[12.0, 12.1], [12.2, 12.1], [12.0, 11.9], [12.1, 12.0]], 0)]  # +20%, tight
    noisy = [timing("none", [[9.0, 9.0], [16.0, 16.0], [9.5, 9.5], [15.0, 15.0]], 0)]  # +20% but noise
    pa, pb, pc = (
        write_store(tmp_path / "a.jsonl", a),
        write_store(tmp_path / "b.jsonl", slower),
        write_store(tmp_path / "c.jsonl", noisy),
    )
    (row,) = compare_rows(a, slower)
    assert row.delta.pct == pytest.approx(20.0, abs=0.2) and row.delta.low > 15 and row.regression_above(5)
    (loose,) = compare_rows(a, noisy)
    assert loose.delta.low < 0 < loose.delta.high and not loose.regression_above(5)
    runner = CliRunner()
    res = runner.invoke(app, ["compare", pa, pb, "--fail-above", "5"])
    assert res.exit_code == 1 and "regression > 5%" in res.output
    assert runner.invoke(app, ["compare", pa, pb, "--fail-above", "30"]).exit_code == 0
    assert runner.invoke(app, ["compare", pa, pc, "--fail-above", "5"]).exit_code == 0
    assert runner.invoke(app, ["compare", pa, pb]).exit_code == 0  # without the flag compare only reports


T_975_DF4 = 2.776445  # Student's t, 0.975 quantile, 4 degrees of freedom (printed tables)


def test_batch_means_worked_by_hand():
    from attnbench.core.stats import alternating_delta, batch_interval

    # Ten rounds 1..10 in five batches of two: batch means 1.5, 3.5, 5.5, 7.5, 9.5 (sd sqrt(10)), se sqrt(10)/sqrt(5).
    mean, half, b = batch_interval([float(v) for v in range(1, 11)], 5)
    assert (mean, b) == (5.5, 5) and half == pytest.approx(T_975_DF4 * math.sqrt(2), rel=1e-6)
    # Eleven rounds: the last batch takes the remainder (9, 10, 11: mean 10), the mean is over rounds.
    mean, half, b = batch_interval([float(v) for v in range(1, 12)], 5)
    means = [1.5, 3.5, 5.5, 7.5, 10.0]
    sd = math.sqrt(sum((m - sum(means) / 5) ** 2 for m in means) / 4)
    assert (mean, b) == (6.0, 5) and half == pytest.approx(T_975_DF4 * sd / math.sqrt(5), rel=1e-6)
    # Fewer than 4 rounds: no batches, the t over rounds (what records from before batching get).
    mean, half, b = batch_interval([1.0, 2.0, 3.0], 5)
    assert (mean, b) == (2.0, 0) and half == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-6)
    # In a Δ: rounds that drift together (each round's ratio exact, the drift slow) get the batch means' wider band.
    base = [[10.0] * 3 for _ in range(10)]
    variant = [[10.0 * math.exp(0.05 + 0.002 * r)] * 3 for r in range(10)]  # ln ratio 0.050 .. 0.068, a slow drift
    rounds_ci = alternating_delta(variant, base)
    batch_ci = alternating_delta(variant, base, batches=5)
    assert batch_ci.pct == pytest.approx(rounds_ci.pct) and batch_ci.n == rounds_ci.n == 10
    d = [0.05 + 0.002 * r for r in range(10)]
    bm = [(d[2 * i] + d[2 * i + 1]) / 2 for i in range(5)]
    half = T_975_DF4 * math.sqrt(sum((m - sum(bm) / 5) ** 2 for m in bm) / 4) / math.sqrt(5)
    assert batch_ci.high == pytest.approx(100 * math.expm1(sum(d) / 10 + half), rel=1e-6)
    assert batch_ci.halfwidth > rounds_ci.halfwidth and "5 batch means of 10 rounds" in batch_ci.method
