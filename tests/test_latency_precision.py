"""The latency estimator and schedule: paired per-call Δ from undisturbed calls worked by hand, honest
pairing labels, the stop rule (target met / time spent / contended), contention read from the machine's
counters, the priority request, direct attribution per site, and NaN after warm-up. Values of real
timings are never asserted (speed belongs in benchmarks); fake steps and fixed samples are."""

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from attnbench import build
from attnbench.core.stats import MIN_PAIRS, alternating_delta, alternating_difference
from attnbench.measures import contention
from attnbench.measures.timing.network import measure_latency
from attnbench.measures.timing.settings import LatencySettings
from attnbench.measures.timing.sites import capture_sites, measure_sites
from attnbench.records.measurement import Measurement
from attnbench.records.record import Record
from attnbench.report import render_markdown
from attnbench.report.cells import delta_interval, delta_ms
from attnbench.report.notes import contention_line

T_975_DF1 = 12.7062047362  # Student's t, 0.975 quantile, 1 degree of freedom (printed tables)


def test_alternating_delta_worked_by_hand():
    # Round 1: call 4 of the variant waited half its thread time for a CPU -> its pair is left out.
    v = [[11.0, 12.0, 11.5, 30.0], [10.5, 11.0, 11.0]]
    b = [[10.0, 10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]
    vw = [[0.0, 0.0, 0.01, 0.5], [0.0, 0.0, 0.0]]
    bw = [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    m1 = math.log(1.15)  # median of ln 1.1, ln 1.2, ln 1.15
    m2 = math.log(1.10)  # median of ln 1.05, ln 1.1, ln 1.1
    mean = (m1 + m2) / 2
    half = T_975_DF1 * abs(m1 - m2) / math.sqrt(2) / math.sqrt(2)  # sd of two values = |a-b|/sqrt(2)
    ci = alternating_delta(v, b, vw, bw)
    assert ci.paired and ci.n == 2 and ci.clean == pytest.approx(6 / 7)
    assert ci.pct == pytest.approx(100 * math.expm1(mean), rel=1e-9)
    assert ci.low == pytest.approx(100 * math.expm1(mean - half), rel=1e-9)
    assert ci.high == pytest.approx(100 * math.expm1(mean + half), rel=1e-9)
    # Without wait information every call counts: round 1 has four pairs, its median the mean of the middle two
    all_calls = alternating_delta(v, b)
    r1 = sorted([math.log(x / 10) for x in v[0]])
    assert all_calls.pct == pytest.approx(100 * math.expm1(((r1[1] + r1[2]) / 2 + m2) / 2), rel=1e-9)
    # Added ms, same pairs: medians of differences 1.5 and 1.0 ms
    d = alternating_difference(v, b, vw, bw)
    mean_ms, hi, n = d.mean, d.high, d.rounds
    assert (mean_ms, n) == (pytest.approx(1.25), 2) and hi - mean_ms == pytest.approx(
        T_975_DF1 * 0.5 / math.sqrt(2) / math.sqrt(2)
    )


def test_a_round_needs_enough_undisturbed_pairs():
    v, b = [[11.0] * 4, [12.0] * 4], [[10.0] * 4, [10.0] * 4]
    disturbed = [[0.0] * (MIN_PAIRS - 1) + [0.9] * (5 - MIN_PAIRS), [0.0] * 4]
    ci = alternating_delta(v, b, disturbed, None)
    assert ci.n == 1 and ci.pct == pytest.approx(20.0) and ci.low is None  # round 1 dropped: one round, no interval
    none_left = alternating_delta(v, b, [[0.9] * 4, [0.9] * 4], None)
    assert none_left.n == 0 and math.isnan(none_left.pct) and none_left.clean == 0.0


def _timing(label, rounds, group, waits=None, contended=False, pid=1, started=0.0):
    flat = sorted(t for r in rounds for t in r)
    med = flat[len(flat) // 2]
    stats = {
        "median_ms": med,
        "iqr_ms": 0.1,
        "images_per_s": 1e3 / med,
        "rounds_ms": rounds,
        "schedule": "alternating",
        "group": group,
        "baseline": "none",
        "contention": {
            "contended": contended,
            "others_cpu": 0.5 if contended else 0.0,
            "clean": 0.0 if contended else 1.0,
            "nice": 0,
            "nice_granted": False,
        },
        "stop": {"reason": "contended" if contended else "rounds", "target": None, "rounds": len(rounds)},
    }
    if waits is not None:
        stats["rounds_wait"] = waits
    return Record(
        key=f"{label}-{group}",
        suite="t",
        backbone="resnet18",
        label=label,
        module=label,
        metric="latency_cpu",
        position=(0, 0 if label == "none" else 1),
        config={"input_size": [224, 224], "batch_size": 1},
        status="ok",
        measurement=Measurement(
            "latency_cpu",
            med,
            "ms",
            "test",
            {"rounds": len(rounds), "min_time": 0.1, "warmup": 1, "schedule": "alternating", "nice": -20},
            stats,
        ),
        pid=pid,
        started=started,
    )


def test_pairing_is_claimed_only_within_one_group():
    base = _timing("none", [[10.0, 10.0, 10.0]] * 3, "g1")
    same = _timing("se", [[11.0, 11.0, 11.0]] * 3, "g1")
    other = _timing("se", [[11.0, 11.0, 11.0]] * 3, "g2")  # e.g. `run -m se`, later `run --resume`
    assert delta_interval(same, base).paired and not delta_interval(other, base).paired
    assert delta_ms(same, base).paired is True and delta_ms(other, base).paired is False
    md = render_markdown([base, other])
    row = next(ln for ln in md.splitlines() if ln.startswith("| resnet18 | se"))
    assert "(unpaired)" in row and "+10.00%" in row
    assert "(unpaired)" not in next(
        ln for ln in render_markdown([base, same]).splitlines() if ln.startswith("| resnet18 | se")
    )


def test_contended_group_is_marked_and_named_in_one_line():
    base = _timing("none", [[30.0, 90.0, 31.0]] * 3, "g", waits=[[0.5, 0.6, 0.4]] * 3, contended=True)
    se = _timing("se", [[33.0, 80.0, 35.0]] * 3, "g", waits=[[0.5, 0.6, 0.4]] * 3, contended=True)
    md = render_markdown([base, se])
    row = next(ln for ln in md.splitlines() if ln.startswith("| resnet18 | se"))
    assert "not supported¶" in row and "¶ contended: resnet18 latency_cpu" in md and "Δ of se not supported" in md
    line = contention_line([base, se])
    assert line.startswith("contended: resnet18 latency_cpu") and "Δ of se not supported" in line and "\n" not in line
    assert contention_line([_timing("none", [[10.0]] * 3, "q"), _timing("se", [[11.0]] * 3, "q")]) == ""


def test_machine_state_from_counters_by_hand():
    a = contention.MachineSample(
        t=0.0, cpu_total=1000, cpu_busy=300, cpu_steal=10, own_ticks=200, psi_cpu_us=0, nivcsw=5, loadavg=1.0
    )
    b = contention.MachineSample(
        t=2.0, cpu_total=1400, cpu_busy=650, cpu_steal=14, own_ticks=390, psi_cpu_us=500_000, nivcsw=25, loadavg=3.5
    )
    m = contention.machine_state(a, b)
    # others: (350 busy - 190 ours) / 400 = 0.4; steal 4 / 400; PSI 0.5 s of waiting in 2 s; 20 switches in 2 s
    assert m["others_cpu"] == pytest.approx(0.4) and m["steal"] == pytest.approx(0.01)
    assert m["psi_cpu_some"] == pytest.approx(0.25) and m["nivcsw_per_s"] == pytest.approx(10.0) and m["loadavg"] == 3.5


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux thread counters")
def test_thread_wait_counts_time_spent_runnable_but_not_running():
    tw = contention.ThreadWait()
    if not tw.available:
        pytest.skip("kernel without schedstat")
    w0 = tw.read()
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass
    assert tw.read() >= w0  # monotonic; its size depends on the machine and is not asserted


def test_priority_request_is_recorded_and_undone():
    """In a child process: niceness inside the block is the request where it was granted, else unchanged;
    afterwards every thread is back where it was."""
    code = (
        "import os, torch; torch.set_num_threads(2); torch.ones(1000, 1000) @ torch.ones(1000, 1000)\n"
        "from attnbench.measures.contention import raised_priority\n"
        "tids = lambda: [int(t) for t in os.listdir('/proc/self/task')]\n"
        "before = {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids()}\n"
        "with raised_priority(-5) as p:\n"
        "    inside = {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids()}\n"
        "after = {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids()}\n"
        "assert after == before, (before, after)\n"
        "assert p['granted'] == all(v == -5 for v in inside.values()), (p, inside)\n"
        "assert p['granted'] or inside == before\n"
        "with raised_priority(None) as q: assert q['granted'] is False\n"
        "with raised_priority(5) as lower:  # lowering is always permitted, and applied (issue #33)\n"
        "    low = {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids()}\n"
        "assert lower['granted'] and lower['obtained'] == 5 and set(low.values()) == {5}, (lower, low)\n"
        "print('ok', p['granted'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


class Sleeper(nn.Module):
    """A fake model whose call takes ``ms`` milliseconds of sleeping (no CPU: fine beside other tests)."""

    def __init__(self, ms):
        super().__init__()
        self.ms = ms

    def forward(self, x):
        time.sleep(self.ms / 1e3)
        return x.sum().reshape(1)


# clean_wait 1.0: a sleeping step woken late on a busy test machine still counts (contention has its own test)
FAKE = dict(input_size=(4, 4), warmup=1, min_time=0.01, min_iters=3, threads=1, nice=None, clean_wait=1.0)


def test_stop_rule_target_met_or_time_spent():
    models = {"none": Sleeper(2), "slow": Sleeper(3)}
    met = measure_latency(models, LatencySettings(**FAKE, rounds=3, target=200.0, max_time=30), baseline="none")
    assert met["slow"].stats["stop"]["reason"] == "target met" and met["slow"].stats["stop"]["rounds"] == 3
    assert met["slow"].stats["stop"]["met"] is True and met["none"].stats["stop"]["halfwidth"] is None
    spent = measure_latency(models, LatencySettings(**FAKE, rounds=3, target=1e-9, max_time=0.3), baseline="none")
    stop = spent["slow"].stats["stop"]
    assert stop["reason"] == "max_time" and stop["met"] is False and stop["seconds"] >= 0.3
    assert spent["slow"].settings["max_time"] == 0.3 and spent["slow"].settings["schedule"] == "alternating"
    assert len({m.stats["group"] for m in spent.values()}) == 1  # one group id: these rows are paired


def test_contended_timing_stops_early_and_says_so(monkeypatch):
    clock = {"w": 0.0}

    def always_waiting(self):  # every call waited: as if other processes held the CPUs throughout
        clock["w"] += 1.0
        return clock["w"]

    monkeypatch.setattr(contention.ThreadWait, "read", always_waiting)
    monkeypatch.setattr(contention.ThreadWait, "refresh", lambda self: setattr(self, "paths", ["x"]))
    out = measure_latency(
        {"none": Sleeper(1), "se": Sleeper(2)},
        LatencySettings(**FAKE, rounds=10, target=1.0, max_time=60),
        baseline="none",
    )
    stop, c = out["se"].stats["stop"], out["se"].stats["contention"]
    assert stop["reason"] == "contended" and stop["rounds"] == 3 and c["contended"] and c["clean"] == 0.0


def test_nan_after_warm_up_fails_the_model():
    class LateNaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x.sum().reshape(1) * (float("nan") if self.calls > 4 else 1.0)

    failed = {}
    out = measure_latency(
        {"ok": Sleeper(0), "late": LateNaN()},
        LatencySettings(**FAKE, rounds=3),
        on_error=lambda label, exc: failed.setdefault(label, exc),
    )
    assert set(out) == {"ok"} and type(failed["late"]).__name__ == "NonFiniteOutput"
    assert "while timing" in str(failed["late"])


def test_sites_are_captured_with_the_shapes_they_see():
    model = build("resnet18", "se", input_size=64)
    sites = capture_sites(model, torch.randn(1, 3, 64, 64))
    shapes = [(slot.stage, tuple(x.shape)) for slot, x in sites]
    # ResNet-18 at 64x64: stem /4 -> 16x16; stages 1-4 at 64/128/256/512 channels, 16/8/4/2 px, two blocks each
    assert (
        shapes
        == [(1, (1, 64, 16, 16))] * 2
        + [(2, (1, 128, 8, 8))] * 2
        + [(3, (1, 256, 4, 4))] * 2
        + [(4, (1, 512, 2, 2))] * 2
    )


def test_direct_attribution_per_stage_sums_to_the_total():
    models = {
        "se": build("resnet18", "se", input_size=32),
        "nonlocal": build("resnet18", "nonlocal", input_size=32, stages=[3]),
    }
    out = measure_sites(
        models,
        LatencySettings(input_size=(32, 32), warmup=1, rounds=3, min_time=0.01, min_iters=2, threads=1, nice=None),
    )
    se, nl = out["se"], out["nonlocal"]
    assert (
        se.metric == "attention_cpu" and len(se.stats["sites"]) == 8 and set(se.stats["stages"]) == {"1", "2", "3", "4"}
    )
    assert [s["stage"] for s in nl.stats["sites"]] == [3] and set(nl.stats["stages"]) == {"3"}
    assert se.value == pytest.approx(sum(v["ms"] for v in se.stats["stages"].values()), rel=1e-9)
    assert (
        se.value > 0 and len(se.stats["rounds_total_ms"]) == 3 and se.stats["low_ms"] <= se.value <= se.stats["high_ms"]
    )
    assert se.stats["group"] == nl.stats["group"]  # all sites of all variants interleaved in one group


def test_train_step_at_batch_one_is_unsupported_with_a_fix(tmp_path):
    from attnbench.harness.runner import run_suite
    from attnbench.suite.load import load_suite

    suite = tmp_path / "b1.yaml"
    suite.write_text(
        "name: b1\nbackbones: [resnet18]\nmodules: [none]\ninput_size: 32\nbatch_size: 1\n"
        "metrics: [train_step_cpu]\nlatency: {threads: 1, warmup: 1, rounds: 1, min_time: 0.01, nice: null}\n"
    )
    result = run_suite(load_suite(str(suite)), tmp_path / "out")
    (rec,) = result.records
    assert rec.status == "unsupported" and "batch_size >= 2" in rec.note and result.exit_code == 0


def test_compare_never_calls_a_contended_timing_a_regression(tmp_path):
    from attnbench.report.compare import compare_rows, render_compare_rows
    from attnbench.report.gate import gate

    quiet = [_timing("none", [[10.0, 10.1, 10.0]] * 4, "a")]
    loaded = [_timing("none", [[30.0, 31.0, 90.0]] * 4, "b", waits=[[0.5, 0.5, 0.6]] * 4, contended=True)]
    (row,) = compare_rows(quiet, loaded)
    assert row.contended == "B" and not row.regression_above(5)  # +200%, but measured under load
    assert "not comparable: B contended¶" in render_compare_rows([row])
    line = gate(quiet, loaded, [row], 5.0)
    assert line.startswith("cannot pass --fail-above 5") and "contended machine" in line
    (same,) = compare_rows(quiet, [_timing("none", [[12.0, 12.1, 12.0]] * 4, "c")])
    assert same.contended == "" and same.regression_above(5)
