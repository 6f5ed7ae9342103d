"""The predictor table (attnbench/report/predictors.py) on synthetic records whose answers are known."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from attnbench.records.measurement import Measurement
from attnbench.records.record import Record
from attnbench.report import write_outputs
from attnbench.report.predictors import (
    ROOFLINE,
    Sample,
    bootstrap_rho,
    fit_scope,
    loo_predictions,
    render_predictors,
    scopes,
    spearman,
)

BASE_MS = 20.0


def record(backbone, label, metric, value, stats=None, position=(0, 0), runtime="eager", status="ok"):
    config = {"input_size": [224, 224], "batch_size": 1}
    if runtime != "eager":
        config["runtime"] = runtime
    m = None if value is None else Measurement(metric, value, "x", "test", {}, stats or {})
    return Record(
        key=f"{backbone}-{label}-{metric}-{runtime}",
        suite="zoo-latency",
        backbone=backbone,
        label=label,
        module="none" if label == "none" else label,
        metric=metric,
        position=position,
        config=config,
        status=status,
        measurement=m,
        env={"torch": "2.x", "threads": 2},
        error={"type": "X", "message": "y"} if status == "failed" else None,
    )


def timing(backbone, label, added_ms, position, runtime="eager", contended=False, group="g"):
    """Alternating rounds whose paired per-call difference vs `none` is exactly ``added_ms``."""
    rounds = [[BASE_MS + added_ms] * 4 for _ in range(3)]
    stats = {
        "rounds_ms": rounds,
        "schedule": "alternating",
        "group": f"{group}-{backbone}-{runtime}",
        "baseline": "none",
        "contention": {"contended": contended},
        "iqr_ms": 0.0,
        "images_per_s": 1e3 / (BASE_MS + added_ms),
    }
    return record(backbone, label, "latency_cpu", BASE_MS + added_ms, stats, position, runtime)


def counts(backbone, label, macs, params, nbytes, operators, position, own=None):
    own = own or {}
    return [
        record(backbone, label, "params", params, {"attention": own.get("params", 0)}, position),
        record(
            backbone,
            label,
            "macs",
            macs,
            {
                "bytes": nbytes,
                "operators": operators,
                "attention": own.get("macs", 0),
                "bytes_attention": own.get("bytes", 0),
                "operators_attention": own.get("operators", 0),
            },
            position,
        ),
    ]


def zoo(ms_of, modules, backbone="resnet18", bi=0, base=(1e9, 1e7, 4e8, 200), runtime="eager", **kw):
    """none + modules: (label, ΔMACs, Δparams, Δbytes, Δoperators); latency Δ = ms_of(ΔGMACs, ΔMB, Δops)."""
    recs = counts(backbone, "none", *base, position=(bi, 0)) + [timing(backbone, "none", 0.0, (bi, 0), runtime, **kw)]
    for i, (label, dm, dp, db, do) in enumerate(modules, 1):
        recs += counts(backbone, label, base[0] + dm, base[1] + dp, base[2] + db, base[3] + do, (bi, i))
        recs.append(timing(backbone, label, ms_of(dm / 1e9, db / 1e6, do), (bi, i), runtime, **kw))
    return recs


MODULES = [
    ("a", 1e6, 5e4, 3e6, 10),
    ("b", 9e6, 1e3, 1e6, 40),
    ("c", 2e6, 2e6, 8e6, 20),
    ("d", 30e6, 3e5, 2e6, 5),
    ("e", 5e6, 7e4, 12e6, 60),
    ("f", 4e6, 4e4, 5e6, 30),
]


def fits_of(recs, backbones=("resnet18",), what="latency_cpu", runtime="eager"):
    found, _ = scopes(recs)
    sc = next(s for s in found if s.what == what and s.backbones == tuple(backbones) and s.runtime == runtime)
    return {f.predictor: f for f in sc.fits}


def test_latency_exactly_linear_in_bytes_gives_r2_one_and_rho_one():
    f = fits_of(zoo(lambda gm, mb, ops: 0.5 + 0.25 * mb, MODULES))
    b = f["bytes"]
    assert b.n == 6 and b.rho == pytest.approx(1.0) and b.r2 == pytest.approx(1.0)
    assert (b.rho_low, b.rho_high) == (pytest.approx(1.0), pytest.approx(1.0))  # every resample ranks them alike
    assert b.coef == (pytest.approx(0.5), pytest.approx(0.25)) and b.loo_rmse == pytest.approx(0.0, abs=1e-9)
    # ΔMACs ranks these modules otherwise: its ρ is that of ΔMACs with Δbytes (scipy's, as a reference)
    assert f["MACs"].rho == pytest.approx(spearmanr([m[1] for m in MODULES], [m[3] for m in MODULES])[0])
    assert f["MACs"].r2 < 0.5


def test_a_roofline_latency_is_recovered_by_the_two_variable_model():
    f = fits_of(zoo(lambda gm, mb, ops: 3.0 * gm + 0.1 * mb, MODULES))
    roof = f[ROOFLINE]
    assert roof.coef == (pytest.approx(3.0), pytest.approx(0.1)) and roof.r2 == pytest.approx(1.0)
    assert roof.loo_rmse == pytest.approx(0.0, abs=1e-9) and roof.rho == pytest.approx(1.0)
    assert f["bytes"].r2 < 1.0 and f["MACs"].r2 < 1.0


def test_a_reversed_ranking_gives_rho_minus_one():
    f = fits_of(zoo(lambda gm, mb, ops: 10.0 / ops, MODULES))
    assert f["operators"].rho == pytest.approx(-1.0)


def test_spearman_r2_and_loo_against_independent_formulas():
    x, y = [1, 2, 3, 4, 5], [1, 3, 2, 5, 4]
    assert spearman(x, y) == pytest.approx(0.8)  # no ties: 1 - 6·Σd²/(n(n²-1)) = 1 - 6·4/120
    ties_x, ties_y = [1, 2, 2, 3, 5, 5, 7], [2, 1, 4, 4, 6, 5, 9]
    assert spearman(ties_x, ties_y) == pytest.approx(spearmanr(ties_x, ties_y)[0])
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant predictor ranks nothing
    X = np.column_stack([np.ones(5), np.array(x, float)])
    yy = np.array(y, float)
    # leave-one-out residuals of least squares in closed form: e_i / (1 - h_ii), h the hat matrix's diagonal
    coef = np.linalg.lstsq(X, yy, rcond=None)[0]
    h = np.diag(X @ np.linalg.inv(X.T @ X) @ X.T)
    np.testing.assert_allclose(yy - loo_predictions(X, yy), (yy - X @ coef) / (1 - h))


def test_r2_by_hand():
    # x = 1..5, y = (1, 3, 2, 5, 4): slope Sxy/Sxx = 8/10, r = 8/sqrt(10·10) = 0.8, R² = 0.64
    samples = [
        Sample("r", str(i), float(y), None, None, {"MACs": x * 1e9, "params": None, "bytes": None, "operators": None})
        for i, (x, y) in enumerate(zip([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]))
    ]
    macs = {f.predictor: f for f in fit_scope(samples)}["MACs"]
    assert macs.r2 == pytest.approx(0.64) and macs.coef == (pytest.approx(0.6), pytest.approx(0.8))
    assert {f.predictor: f for f in fit_scope(samples)}["bytes"].n == 0  # no sample has it: an empty row, no crash


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = x + rng.normal(scale=0.8, size=20)
    lo, hi = bootstrap_rho(x, y)
    assert (lo, hi) == bootstrap_rho(x, y) and lo < spearman(x, y) < hi and -1 <= lo < hi <= 1
    assert bootstrap_rho(x[:4], y[:4]) == (None, None)  # too few modules for an interval


def test_scopes_pool_backbones_keep_runtimes_apart_and_say_who_was_left_out():
    r18 = zoo(lambda gm, mb, ops: 0.2 * mb, MODULES)
    r50 = zoo(lambda gm, mb, ops: 0.2 * mb, MODULES[:5], backbone="resnet50", bi=1)
    ort = zoo(lambda gm, mb, ops: 0.05 * ops, MODULES, runtime="onnxruntime")
    bad = [timing("resnet18", "g", 1.0, (0, 7), contended=True)] + counts("resnet18", "g", 1e9, 1e7, 4e8, 200, (0, 7))
    failed = [record("resnet18", "h", "latency_cpu", None, position=(0, 8), status="failed")]
    found, left = scopes(r18 + r50 + [r for r in ort if r.metric == "latency_cpu"] + bad + failed)
    labels = [(s.what, s.runtime, s.backbones, len(s.samples)) for s in found]
    assert labels == [
        ("latency_cpu", "eager", ("resnet18",), 6),
        ("latency_cpu", "eager", ("resnet50",), 5),
        ("latency_cpu", "eager", ("resnet18", "resnet50"), 11),
        ("latency_cpu", "onnxruntime", ("resnet18",), 6),
    ]
    assert {f.predictor: f for f in found[2].fits}["bytes"].r2 == pytest.approx(1.0)
    assert {f.predictor: f for f in found[3].fits}["operators"].r2 == pytest.approx(1.0)
    assert "eager: resnet18/g: contended (timed while other processes took the CPU)" in left
    assert "eager: resnet18/h: failed (X)" in left


def test_modules_alone_use_their_own_counts():
    recs = []
    for i, (label, own_bytes, own_ops) in enumerate(
        [("se", 2e6, 80), ("cbam", 9e6, 200), ("eca", 1e6, 90), ("gc", 3e6, 120), ("sk", 20e6, 60)], 1
    ):
        recs += counts(
            "resnet18",
            label,
            1e9,
            1e7,
            4e8,
            200,
            (0, i),
            own={"bytes": own_bytes, "operators": own_ops, "macs": 1e5 * i, "params": 10 * i},
        )
        recs.append(
            record(
                "resnet18",
                label,
                "attention_cpu",
                0.01 * own_ops,
                {"low_ms": 0.0, "high_ms": 1.0, "contention": {}},
                (0, i),
            )
        )
    f = fits_of(recs, what="attention_cpu")
    assert f["operators"].r2 == pytest.approx(1.0) and f["operators"].coef[1] == pytest.approx(0.01)
    assert f["MACs"].n == 5 and f["bytes"].rho == pytest.approx(spearman([2, 9, 1, 3, 20], [80, 200, 90, 120, 60]))


def test_report_writes_the_table_and_plot_only_for_stores_with_traffic(tmp_path):
    recs = zoo(lambda gm, mb, ops: 0.5 + 0.25 * mb, MODULES)
    paths = write_outputs(recs, tmp_path, "zoo-latency")
    md = paths["predictors"].read_text()
    assert paths["predictors_plot"].stat().st_size > 0
    assert "| eager | resnet18 | Δbytes | 6 | +1.00 [+1.00, +1.00] | 1.000 | Δms = 0.5 + 0.25·MB | 0.000 |" in md
    assert md == render_predictors(recs, "zoo-latency")  # a pure function of the records: rebuilt byte for byte
    # the same store without the traffic stats (written before bytes were counted): no predictor outputs
    old = [
        Record(
            **{
                **r.__dict__,
                "measurement": Measurement(
                    r.measurement.metric,
                    r.measurement.value,
                    "x",
                    "t",
                    {},
                    {k: v for k, v in r.stats.items() if k != "bytes"},
                ),
            }
        )
        for r in recs
    ]
    paths = write_outputs(old, tmp_path / "old", "zoo-latency")
    assert "predictors" not in paths and not (tmp_path / "old" / "zoo-latency-predictors.md").exists()


def test_the_zoo_latency_suite_produces_the_predictor_outputs_end_to_end(tmp_path):
    """The shipped suite, shrunk (one backbone, four modules, 64x64, eager, a few ms of timing: numbers meaningless,
    the chain is what is checked): run -> records -> <suite>-predictors.md / .png, rebuilt by report alone."""
    import yaml

    from attnbench.harness.runner import run_suite
    from attnbench.records.store import Store
    from attnbench.report.predictors import PREDICTORS
    from attnbench.suite.load import suite_dirs
    from attnbench.suite.parse import parse_suite

    data = yaml.safe_load(
        next(d / "zoo-latency.yaml" for d in suite_dirs() if (d / "zoo-latency.yaml").is_file()).read_text()
    )
    assert data["runtime"] == ["eager", "onnxruntime"] and data["latency"]["target"] == 1.0
    assert "timm:halo" in data["modules"] and "timm:ge" not in data["modules"]
    # clean_wait 1: every call counts as undisturbed, so a busy test machine cannot leave rows out as contended
    small = {
        **{k: v for k, v in data.items() if k != "module_options"},
        "backbones": ["resnet18"],
        "modules": ["none", "se", "eca", "cbam", "simam"],
        "input_size": 64,
        "runtime": "eager",
        "latency": {"threads": 1, "warmup": 1, "rounds": 2, "min_time": 0.01, "min_iters": 3, "clean_wait": 1.0},
    }
    result = run_suite(parse_suite(small, "zoo-latency.yaml"), tmp_path)
    assert result.failed == 0
    md = (tmp_path / "zoo-latency-predictors.md").read_text()
    assert (tmp_path / "zoo-latency-predictors.png").stat().st_size > 0
    for p in PREDICTORS:
        assert f"| eager | resnet18 | Δ{p.name} | 4 |" in md and f"| eager | resnet18 | own {p.name} | 4 |" in md
    assert md == render_predictors(Store(tmp_path / "zoo-latency.jsonl").latest(), "zoo-latency")
    table = (tmp_path / "zoo-latency.md").read_text()
    assert "Δbytes %" in table and "MACs/byte" in table and "operators (Δ)" in table


def test_the_cost_table_shows_traffic_columns_only_when_the_records_carry_them():
    from attnbench.report import render_markdown

    recs = [
        record("resnet18", "none", "macs", 2e9, {"bytes": 400_000_000, "operators": 200, "intensity": 5.0}),
        record(
            "resnet18", "se", "macs", 2.1e9, {"bytes": 500_000_000, "operators": 280, "intensity": 4.2}, position=(0, 1)
        ),
    ]
    md = render_markdown(recs)
    assert "| GMACs | ΔGMACs % | conv/linear GMACs | MB moved | Δbytes % | operators (Δ) | MACs/byte |" in md
    assert "| 2.000 | — | — | 400.0 | — | 200 | 5.00 |" in md
    assert "| 2.100 | +5.00% | — | 500.0 | +25.00% | 280 (+80) | 4.20 |" in md
    assert "Traffic: 'MB moved'" in md
    old = render_markdown(
        [record("resnet18", "none", "macs", 2e9), record("resnet18", "se", "macs", 2.1e9, position=(0, 1))]
    )
    assert "MB moved" not in old and "Traffic:" not in old
