"""How repeatable are CPU latency medians? Re-measure one model N times with the overhead
suite's settings and report the coefficient of variation (std/mean) of the medians.

    python benchmarks/latency_repeatability.py [--backbone resnet18] [--module none] [--repeats 5]
"""

import argparse
import statistics

from attnbench import build
from attnbench.measures.timing.network import measure_latency
from attnbench.measures.timing.settings import LatencySettings
from attnbench.suite.load import load_suite


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--module", default="none")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--suite", default="overhead", help="take input size, batch and latency settings from this suite")
    a = p.parse_args()
    suite = load_suite(a.suite)
    settings = LatencySettings(batch_size=suite.batch_size, input_size=suite.input_size, **suite.latency)
    model = build(a.backbone, None if a.module == "none" else a.module)
    medians, iqrs = [], []
    for _ in range(a.repeats):
        m = measure_latency({"m": model}, settings)["m"]
        medians.append(m.stats["median_ms"])
        iqrs.append(m.stats["iqr_ms"])
    mean = statistics.fmean(medians)
    cv = statistics.stdev(medians) / mean if len(medians) > 1 else 0.0
    print(
        f"{a.backbone}+{a.module}, {suite.input_size[0]}x{suite.input_size[1]}, batch {suite.batch_size}, "
        f"threads {settings.threads}, {settings.rounds} rounds x {settings.min_time} s"
    )
    print("medians ms: " + ", ".join(f"{v:.2f}" for v in medians) + f"  (IQRs: {', '.join(f'{v:.2f}' for v in iqrs)})")
    print(f"mean of medians {mean:.2f} ms, CV {100 * cv:.1f}%")


if __name__ == "__main__":
    main()
