"""How precise, reproducible and load-proof are attnbench's Δ latencies, beside timm's benchmark.py way?

Runs, each in a fresh process:
- quiet: the harness (`attnbench run` on the overhead suite's timing settings) and the timm way (per model
  one block: 10 warm-up steps, then the mean of 50 timed steps, models one after another, as timm's
  benchmark.py InferenceBenchmarkRunner does), ``--repeats`` times each;
- loaded: the same with two busy processes on the cores, started here: the harness as configured (it asks
  for nice -20 while timing, granted to root), the harness without asking (``nice: null``), and the timm way.
Reports per Δ: the point estimates, 95% half-widths, cross-run coverage (how often one run's point falls
inside another run's interval; two independent runs with equal, correct 95% intervals give about 83%),
how far loaded runs land from the quiet mean and whether they said they were contended, and wall times.
The timm way prints no interval: the one computed for it here is Welch's t on its 50 step times, what a
reader of its output could derive at best.

    python benchmarks/latency_precision.py [--repeats 5] [--hosts idle,emulated] [--backbones resnet18,resnet50] [--out results]

Hosts: ``idle`` (this machine, nothing else running) and ``emulated`` (a slower, noisier VM emulated here:
AVX2 kernels, a cgroup CPU quota and a drifting memory-streaming co-tenant; see benchmarks/emulated_host.py).

Run it on a machine nobody else is using (it measures the noise of this machine, and makes its own load).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # emulated_host
TIMM_WAY = r'''
import json, sys, time, torch
from attnbench import build
from attnbench.core.stats import unpaired_ratio_interval
backbone, modules, threads = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
torch.set_num_threads(threads)
opts = {"nonlocal": {"stages": [3], "blocks": 1}}
x = torch.randn(1, 3, 224, 224)
steps = {}
t0 = time.perf_counter()
for m in modules:  # one block per model, one model after another (timm's benchmark.py: 10 warm-up, 50 timed)
    torch.manual_seed(0)
    model = build(backbone, None if m == "none" else m, **opts.get(m, {})).eval()
    with torch.no_grad():
        for _ in range(10):
            model(x)
        times = []
        for _ in range(50):
            a = time.perf_counter(); model(x); times.append((time.perf_counter() - a) * 1e3)
    steps[m] = times
out = {"timing_s": time.perf_counter() - t0, "mean_ms": {m: sum(t) / len(t) for m, t in steps.items()}, "delta": {}}
for m in modules[1:]:
    ci = unpaired_ratio_interval([[t] for t in steps[m]], [[t] for t in steps["none"]])  # Welch on log step times
    out["delta"][m] = {"pct": 100 * (out["mean_ms"][m] / out["mean_ms"]["none"] - 1), "low": ci.low, "high": ci.high,
                       "contended": None}
print(json.dumps(out))
'''


def default_latency() -> dict:
    """The main job's own timing settings (suites/overhead.yaml's ``latency:``): the default is what is checked."""
    import yaml

    return dict(yaml.safe_load((HERE.parent / "suites" / "overhead.yaml").read_text())["latency"])


def suite_yaml(backbones, modules, nice) -> str:
    import json as _json

    lat = {**default_latency(), **({"nice": None} if nice is None else {})}
    return (
        f"name: latency-precision\nbackbones: [{', '.join(backbones)}]\nmodules: [{', '.join(modules)}]\n"
        "module_options:\n  nonlocal: {stages: [3], blocks: 1}\ninput_size: 224\nbatch_size: 1\n"
        f"metrics: [latency_cpu]\nlatency: {_json.dumps(lat)}\n"
    )


def harness_run(backbones, modules, nice="ask", host=None) -> dict:
    from attnbench.records.store import Store
    from attnbench.report.cells import delta_interval

    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "s.yaml"
        suite.write_text(suite_yaml(backbones, modules, None if nice is None else -20))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench", "run", "--suite", str(suite), "--out", tmp, "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=host["env"] if host else None,
        )
        if host:
            host["join"](proc.pid)
        _, err = proc.communicate()
        if host:
            host["leave"](proc.pid)
        wall = time.perf_counter() - t0
        recs = Store(Path(tmp) / "latency-precision.jsonl").latest()
    tail = [ln.replace(tmp, "OUT") for ln in err.strip().splitlines()[-3:]]  # no temporary path in the results
    out = {"wall_s": wall, "rc": proc.returncode, "stderr_tail": tail, "delta": {}, "timing_s": 0.0}
    for b in backbones:
        by = {r.label: r for r in recs if r.backbone == b and r.ok}
        if "none" not in by:
            continue
        out["timing_s"] += (by["none"].stats.get("stop") or {}).get("seconds", 0.0)
        for m in modules[1:]:
            if m in by:
                ci = delta_interval(by[m], by["none"])
                c = by[m].stats.get("contention") or {}
                out["delta"][f"{b}/{m}"] = {
                    "pct": ci.pct,
                    "low": ci.low,
                    "high": ci.high,
                    "contended": bool(
                        c.get("contended") or (by["none"].stats.get("contention") or {}).get("contended")
                    ),
                    "others_cpu": c.get("others_cpu"),
                    "clean": c.get("clean"),
                    "nice": c.get("nice"),
                    "stop": by[m].stats.get("stop"),
                }
    return out


def timm_run(backbones, modules, host=None) -> dict:
    out = {"delta": {}, "timing_s": 0.0}
    t0 = time.perf_counter()
    for b in backbones:
        proc = subprocess.Popen(
            [sys.executable, "-c", TIMM_WAY, b, ",".join(modules), "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=host["env"] if host else None,
        )
        if host:
            host["join"](proc.pid)
        stdout, _ = proc.communicate()
        if host:
            host["leave"](proc.pid)
        res = json.loads(stdout.strip().splitlines()[-1])
        out["timing_s"] += res["timing_s"]
        out["delta"].update({f"{b}/{m}": v for m, v in res["delta"].items()})
    out["wall_s"] = time.perf_counter() - t0
    return out


class Load:
    """Two busy processes (pure Python spin loops), started here, stopped on exit."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def coverage(runs, key) -> tuple:
    """(hits, pairs): how often run i's point lies inside run j's interval, over ordered pairs i != j."""
    pts = [(r["delta"][key]["pct"], r["delta"][key]["low"], r["delta"][key]["high"]) for r in runs if key in r["delta"]]
    hits = pairs = 0
    for i, (p, _, _) in enumerate(pts):
        for j, (_, lo, hi) in enumerate(pts):
            if i != j and lo is not None and not math.isnan(p):
                pairs += 1
                hits += lo <= p <= hi
    return hits, pairs


def halfwidth(d) -> float:
    return float("nan") if d["low"] is None or math.isnan(d["pct"]) else max(d["high"] - d["pct"], d["pct"] - d["low"])


def render_host(name: str, block: dict, keys, res_settings=None) -> list:
    """One host's sections: points and half-widths per run, coverage and spread, loaded runs."""
    methods = [m for m in ("harness", "timm") if block["quiet"].get(m)]
    lines = [f"## Host: {name} ({block['describe']})", ""]
    head = "| method | " + " | ".join(keys) + " |"
    lines += ["### Quiet: point estimates (each run) and 95% half-widths", "", head, "|---|" + "---:|" * len(keys)]
    for m in methods:
        runs = block["quiet"][m]
        pts = [" / ".join(f"{r['delta'][k]['pct']:+.1f}" for r in runs if k in r["delta"]) for k in keys]
        hws = [" / ".join(f"{halfwidth(r['delta'][k]):.1f}" for r in runs if k in r["delta"]) for k in keys]
        lines.append(f"| {m}: Δ % | " + " | ".join(pts) + " |")
        lines.append(f"| {m}: ± | " + " | ".join(hws) + " |")
    lines += [
        "",
        "### Quiet: coverage, spread between runs and time",
        "",
        "| method | coverage (pooled) | "
        + " | ".join(f"coverage {k}" for k in keys)
        + " | target met (Δs) | sd of points between runs (mean over Δs) | median half-width | timing s / run | wall s / run |",
        "|---|---:|" + "---:|" * len(keys) + "---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        runs = block["quiet"][m]
        cov = [coverage(runs, k) for k in keys]
        hits, pairs = sum(c[0] for c in cov), sum(c[1] for c in cov)
        pts_by_key = [
            [r["delta"][k]["pct"] for r in runs if k in r["delta"] and not math.isnan(r["delta"][k]["pct"])]
            for k in keys
        ]
        sds = [statistics.stdev(v) for v in pts_by_key if len(v) > 1]  # Δs a run printed as n/a are left out
        hws = [
            h for h in (halfwidth(r["delta"][k]) for r in runs for k in keys if k in r["delta"]) if not math.isnan(h)
        ]
        # met: the Δ's own 95% half-width (the table's interval) within the target (stats.stop.met of records
        # written before the stop record used batch means held the over-rounds width instead)
        target = (res_settings or {}).get("target") or 1.0
        met = [
            not math.isnan(halfwidth(r["delta"][k])) and halfwidth(r["delta"][k]) <= target
            for r in runs
            for k in keys
            if k in r["delta"]
        ]
        met_text = f"{sum(1 for x in met if x)}/{len(met)}" if m == "harness" else "—"
        lines.append(
            f"| {m} | {100 * hits / max(1, pairs):.0f}% ({hits}/{pairs}) | "
            + " | ".join(f"{100 * h / max(1, p):.0f}%" for h, p in cov)
            + f" | {met_text} | {statistics.fmean(sds) if sds else float('nan'):.2f} | {statistics.median(hws) if hws else float('nan'):.2f} | "
            f"{statistics.fmean(r['timing_s'] for r in runs):.0f} | {statistics.fmean(r['wall_s'] for r in runs):.0f} |"
        )
    if block.get("loaded"):
        lines += [
            "",
            "### Loaded (two busy processes): distance from the quiet mean, and what the run said",
            "",
            "| run | " + " | ".join(keys) + " | wall s (x quiet) |",
            "|---|" + "---:|" * len(keys) + "---:|",
        ]
        for run_name, run in block["loaded"].items():
            quiet = block["quiet"]["timm" if run_name.startswith("timm") else "harness"]
            cells = []
            for k in keys:
                d = run["delta"].get(k)
                if d is None or not quiet:
                    cells.append("—")
                    continue
                q = statistics.fmean(r["delta"][k]["pct"] for r in quiet)
                off = "n/a" if math.isnan(d["pct"]) else f"{d['pct'] - q:+.1f}"
                cells.append(f"{off} (±{halfwidth(d):.1f})" + (" contended" if d.get("contended") else ""))
            qwall = statistics.fmean(r["wall_s"] for r in quiet) if quiet else float("nan")
            lines.append(
                f"| {run_name} | " + " | ".join(cells) + f" | {run['wall_s']:.0f} ({run['wall_s'] / qwall:.1f}x) |"
            )
        lines += [
            "",
            "Cells: loaded point minus the quiet runs' mean, in points (its own half-width); 'contended': the "
            "run marked the row and named it in its contention line.",
        ]
    return lines + [""]


def render(res: dict, keys) -> str:
    timm = any(block["quiet"].get("timm") for block in res["hosts"].values())
    loaded = any(block.get("loaded") for block in res["hosts"].values())
    lines = [
        "# Latency precision: attnbench" + (" vs timm's benchmark.py way" if timm else ", fresh processes per host"),
        "",
        f"Machine: {res['machine']}; {res['repeats']} quiet runs of each per host, fresh processes, one after "
        f"another, nothing else running but what the host emulation starts. The harness runs the main job's own "
        f"timing settings (suites/overhead.yaml: `latency: {json.dumps(res['settings'])}`). Coverage: share of "
        "ordered pairs of quiet runs (i, j) where run i's point lies inside run j's 95% interval (about 83% "
        "expected for correct, equally precise intervals). Target met: the Δs whose 95% half-width (the "
        "table's interval) is within the target."
        + (
            " Timm way: mean of 50 steps per model, models one after another; its interval is Welch's t on the "
            "step times (timm prints none)."
            if timm
            else ""
        )
        + (" Loaded = two busy processes on the cores, started by the benchmark." if loaded else ""),
        "",
    ]
    for name, block in res["hosts"].items():
        lines += render_host(name, block, keys, res.get("settings"))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backbones", default="resnet18,resnet50")
    p.add_argument("--modules", default="none,se,cbam,nonlocal")
    p.add_argument(
        "--hosts",
        default="idle,emulated",
        help="idle and/or emulated (a slower, noisier host: benchmarks/emulated_host.py)",
    )
    p.add_argument("--out", default=str(HERE.parent / "results"))
    p.add_argument("--no-loaded", action="store_true", help="skip the two-busy-processes runs")
    p.add_argument("--no-timm", action="store_true", help="skip timm's benchmark.py way")
    p.add_argument("--render", metavar="JSON", help="only write the tables again from a saved latency-precision.json")
    a = p.parse_args()
    if a.render:
        res = json.loads(Path(a.render).read_text())
        keys = [f"{b}/{m}" for b in a.backbones.split(",") for m in a.modules.split(",")[1:]]
        text = render(res, keys)
        (Path(a.out) / "latency-precision.md").write_text(text)
        print(text)
        return
    backbones, modules = a.backbones.split(","), a.modules.split(",")
    from contextlib import nullcontext

    from emulated_host import emulated_host

    from attnbench.harness.env import cpu_name

    res = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, euid {os.geteuid()}",
        "repeats": a.repeats,
        "settings": default_latency(),
        "hosts": {},
    }
    for host in a.hosts.split(","):
        with nullcontext(None) if host == "idle" else emulated_host() as h:
            block = {
                "describe": h["describe"] if h else "nothing else running",
                "quiet": {"harness": [], "timm": []},
                "loaded": {},
            }
            for i in range(a.repeats):
                block["quiet"]["harness"].append(harness_run(backbones, modules, host=h))
                if not a.no_timm:
                    block["quiet"]["timm"].append(timm_run(backbones, modules, host=h))
                print(
                    f"{host} {i + 1}/{a.repeats}: harness {block['quiet']['harness'][-1]['wall_s']:.0f} s",
                    file=sys.stderr,
                )
            if host == "idle" and not a.no_loaded:
                with Load():
                    block["loaded"]["harness (nice -20 asked)"] = harness_run(backbones, modules)
                    block["loaded"]["harness (nice: null)"] = harness_run(backbones, modules, nice=None)
                    if not a.no_timm:
                        block["loaded"]["timm way"] = timm_run(backbones, modules)
        res["hosts"][host] = block
    keys = [f"{b}/{m}" for b in backbones for m in modules[1:]]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency-precision.json").write_text(json.dumps(res, indent=1, default=str))
    text = render(res, keys)
    (out / "latency-precision.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
