"""Record a long, raw trace of the alternating schedule: every call's start time, variant, duration and run-queue wait.

Why: a 5-run coverage experiment costs minutes per design; a long trace lets the schedule's parameters (round length,
budget, how rounds are aggregated into an interval) be compared offline on the same host states, by cutting the trace
into windows as fresh runs would see them (benchmarks/latency_windows.py). Run it on idle cores (or under the host
you want to emulate); it measures the machine, not the code.

    python benchmarks/latency_trace.py --backbone resnet50 --minutes 12 --out /tmp/trace-r50.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import torch

from attnbench import build
from attnbench.harness.env import cpu_name
from attnbench.measures import contention

OPTS = {"se": {"reduction": 16}, "cbam": {"reduction": 16, "kernel_size": 7}, "nonlocal": {"stages": [3], "blocks": 1}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--modules", default="none,se,cbam,nonlocal")
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nice", type=int, default=-20)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    labels = a.modules.split(",")
    x = torch.randn(1, 3, 224, 224)
    models = {}
    for m in labels:
        torch.manual_seed(0)
        models[m] = build(a.backbone, None if m == "none" else m, **OPTS.get(m, {})).eval()
    calls = []  # (t_start_s, label index, seconds, wait share)
    with contention.raised_priority(a.nice) as prio, torch.inference_mode():
        for model in models.values():
            for _ in range(5):
                model(x)
        waits = contention.ThreadWait()
        gc.collect()
        gc.disable()
        t_origin = time.perf_counter()
        end = t_origin + 60 * a.minutes
        cycle = 0
        while time.perf_counter() < end:
            k = cycle % len(labels)
            cycle += 1
            for i in list(range(k, len(labels))) + list(range(k)):
                w0 = waits.read()
                t0 = time.perf_counter()
                models[labels[i]](x)
                t1 = time.perf_counter()
                w1 = waits.read()
                share = None if w0 is None or w1 is None else round(max(0.0, w1 - w0) / (a.threads * (t1 - t0)), 4)
                calls.append((round(t0 - t_origin, 6), i, round(t1 - t0, 7), share))
        gc.enable()
    with open(a.out, "w") as f:
        json.dump(
            {
                "backbone": a.backbone,
                "labels": labels,
                "threads": a.threads,
                "cpu": cpu_name(),
                "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "priority": prio,
                "calls": calls,
            },
            f,
        )
    print(f"{len(calls)} calls in {a.minutes} min -> {a.out}")


if __name__ == "__main__":
    main()
