"""Coordinator memory and display freezes of a large params+MACs grid on a Dask LocalCluster.

    nice -n 19 python benchmarks/dask_coordinator.py --cells 1000 [--cells 5000 --cells 10000] [--workers 2]

The grid: 5 of timm's test backbones (test_resnet, test_efficientnet, test_byobnet, test_convnext,
test_nfnet: full timm models of a few thousand parameters) x 10 variants (none, se, eca, cbam, gc,
coord, simam, srm, ese, triplet; plus `native` where a backbone has its own attention) x P small input
sizes (HxW between 32 and 56) x {params, macs}: the cheapest real cells there are (10-100 ms each), so the
coordinator's own costs dominate. Each size runs in a fresh process (the coordinator is this process, and
a LocalCluster's scheduler lives in it too, as with `attnbench run --executor dask`).

Measured, per size: the coordinator's peak RSS (ru_maxrss, and its growth over the RSS before the run);
"stall": the longest a 20 Hz ticker thread in the coordinator overslept (the GIL held, a garbage
collection: what freezes the progress display's own refresh thread); "update gap": the longest time
between two progress updates (a finished cell, or the executor's report of which cell runs where) while
cells were running. On a shared machine a nice-19 coordinator also waits for a CPU: each is reported as
measured and "own" (less the time that thread sat runnable in the run queue, from
/proc/thread-self/schedstat), which is what the coordinator itself is responsible for.
``--max-rss-gb`` stops a run whose coordinator grows past it (reported as such).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BACKBONES = ["test_resnet", "test_efficientnet", "test_byobnet", "test_convnext", "test_nfnet"]
MODULES = ["none", "se", "eca", "cbam", "gc", "coord", "simam", "srm", "ese", "triplet"]


def sizes(n: int):
    """n distinct small (H, W) input sizes, 32..56 each side (every backbone and module runs there)."""
    out = [[h, w] for h in range(32, 57) for w in range(32, 57)]
    out.sort(key=lambda hw: (max(hw), hw))
    return out[:n]


def grid(cells: int, root: Path):
    from attnbench.suite.parse import parse_suite
    from attnbench.suite.plan import plan

    points = max(1, round(cells / (2 * len(BACKBONES) * len(MODULES))))
    spec = {
        "name": "scale",
        "backbones": BACKBONES,
        "modules": MODULES,
        "metrics": ["params", "macs"],
        "input_size": sizes(points),
    }
    suite = parse_suite(spec, str(root / "scale.yaml"))
    return suite, len(plan(suite))


def queued_s() -> float:
    """Seconds the calling thread has spent runnable but not running (0 where schedstat is missing)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(cells: int, workers: int, max_rss_gb: float) -> dict:
    """Run one grid in this process; returns the measurements."""
    from attnbench.harness.dask.coordinator import dask_executor
    from attnbench.harness.runner import run_suite

    root = Path(tempfile.mkdtemp(prefix="attnbench-scale-"))
    suite, n = grid(cells, root)
    base = rss_mb()
    state = {
        "stall": 0.0,
        "gap": 0.0,
        "last": None,
        "peak": base,
        "stop": False,
        "running": False,
        "over": False,
        "done": 0,
        "stall_own": 0.0,
        "gap_own": 0.0,
    }

    def ticker():
        t, q = time.perf_counter(), queued_s()
        while not state["stop"]:
            time.sleep(0.05)
            now, nq = time.perf_counter(), queued_s()
            state["stall"] = max(state["stall"], now - t - 0.05)
            state["stall_own"] = max(state["stall_own"], now - t - 0.05 - (nq - q))
            t, q = now, nq
            state["peak"] = max(state["peak"], rss_mb())
            if state["peak"] > max_rss_gb * 1024 and not state["over"]:
                state["over"] = True
                print(
                    json.dumps(
                        {
                            "cells": n,
                            "aborted": f"coordinator RSS passed {max_rss_gb} GB after {state['done']} cells",
                            "peak_rss_mb": round(state["peak"]),
                        }
                    ),
                    flush=True,
                )
                os._exit(3)

    def update(*_):
        now, q = time.perf_counter(), queued_s()
        if state["last"] is not None and state["running"]:
            state["gap"] = max(state["gap"], now - state["last"][0])
            state["gap_own"] = max(state["gap_own"], now - state["last"][0] - (q - state["last"][1]))
        state["last"] = (now, q)

    def done(task, records):
        state["running"] = True
        state["done"] += len(records)
        update()

    threading.Thread(target=ticker, daemon=True).start()
    ex = dask_executor(n_workers=workers, local_directory=root / "scratch")
    if hasattr(ex, "on_progress"):  # the executor reports which cell runs where at every poll
        ex.on_progress = update
    t0 = time.perf_counter()
    result = run_suite(suite, root / "out", executor=ex, on_done=done)
    wall = time.perf_counter() - t0
    state["stop"] = True
    return {
        "cells": n,
        "ok": result.ok,
        "failed": result.failed,
        "unsupported": result.unsupported,
        "wall_s": round(wall, 1),
        "rss_before_mb": round(base),
        "peak_rss_mb": round(max(state["peak"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)),
        "growth_mb": round(state["peak"] - base),
        "stall_s": round(state["stall"], 2),
        "stall_own_s": round(state["stall_own"], 2),
        "update_gap_s": round(state["gap"], 2),
        "update_gap_own_s": round(state["gap_own"], 2),
        "loadavg": os.getloadavg()[0],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, action="append", help="grid size (repeatable; default 1000 5000 10000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-rss-gb", type=float, default=6.0)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run one size in this process
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.cells[0], a.workers, a.max_rss_gb)), flush=True)
        return
    for cells in a.cells or [1000, 5000, 10000]:
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                "--cells",
                str(cells),
                "--workers",
                str(a.workers),
                "--max-rss-gb",
                str(a.max_rss_gb),
            ]
        )


if __name__ == "__main__":
    main()
