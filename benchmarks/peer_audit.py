"""Audit: ``--as NAME`` against the real peer tool, on the models attnbench measures.

Each tool runs in its own process (the thop versions all import as ``thop``), from a scratch folder on
PYTHONPATH -- the tools are never attnbench dependencies. Install them once, e.g.::

    for spec in thop==0.0.23.post1907171430 thop==0.0.31.post2005241907 thop==0.1.1.post2209072238 \\
                ultralytics-thop==2.2.3 ptflops==0.1 ptflops==0.7.5; do
        pip install --no-deps --target /tmp/peers/${spec%%==*}-${spec##*==} $spec; done

then ``python benchmarks/peer_audit.py`` (``--peers DIR``: where those folders are; ``--set zoo``: the zoo
suite's backbones and modules instead of the 68 audit pairs; ``--only NAME``: one convention). Per tool
it prints how many (backbone, module) pairs give exactly the tool's ops and parameters, and every pair
that does not. A tool that is not installed is skipped with a line saying so; the exit status is 1 when
any installed tool differs anywhere. A pair attnbench cannot build (``sk`` replaces a ResNet's 3x3
conv, which MobileNetV2 has not) is not a pair.

In a worker the model is built once, counted by attnbench's convention first and by the tool second (the
tools leave buffers and hooks behind). Counting only, no timing: safe on a busy machine, but slow
(the pairs are built per tool).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

AUDIT_BACKBONES = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenetv2_100", "efficientnet_b0"]
AUDIT_MODULES = [
    "se",
    "cbam",
    "nonlocal",
    "eca",
    "gc",
    "sk",
    "coord",
    "simam",
    "triplet",
    "bam",
    "srm",
    "ge_theta",
    "ese",
    "sge",
]

# convention -> (folder glob under --peers, how to call the tool)
TOOLS = {
    "thop-0.0.23": ("thop-0.0.23*", "thop"),
    "thop-0.0.31": ("thop-0.0.31*", "thop"),
    "thop-0.1.1": ("thop-0.1.1*", "thop"),
    "ultralytics-thop": ("ultralytics-thop-2.2.3*", "thop"),
    "ptflops-0.1": ("ptflops-0.1", "ptflops-0.1"),
    "ptflops-0.7": ("ptflops-0.7.5*", "ptflops-pytorch"),
    "ptflops-0.7-aten": ("ptflops-0.7.5*", "ptflops-aten"),
}


def pairs(which: str):
    """(backbone, module, options) triples."""
    if "/" in which:  # backbone/module[,backbone/module...]
        return [(*p.split("/", 1), {}) for p in which.split(",")]
    if which == "audit":
        return [(b, m, {}) for b in AUDIT_BACKBONES for m in AUDIT_MODULES]
    from attnbench.suite.load import load_suite

    s = load_suite(which)  # the suite's own module options (timm:halo's block size in the zoo)
    return [(b, v.module, dict(v.options)) for b in s.backbones for v in s.variants if not v.auto]


def run_tool(how: str, model, x):
    """(ops, params) as the tool prints them for ``model`` on input ``x`` (batch 1)."""
    import inspect

    if how == "thop":
        import collections
        import collections.abc

        if not hasattr(collections, "Iterable"):  # thop 0.0.31's utils.py predates Python 3.10; nothing else changes
            collections.Iterable = collections.abc.Iterable
        import thop

        ops, params = thop.profile(model, inputs=(x,), verbose=False)
    elif how == "ptflops-0.1":  # its input_constructor must return keyword arguments
        from ptflops import get_model_complexity_info

        arg = next(iter(inspect.signature(model.forward).parameters))
        ops, params = get_model_complexity_info(
            model,
            tuple(x.shape[-2:]),
            print_per_layer_stat=False,
            as_strings=False,
            input_constructor=lambda res: {arg: x},
        )
    else:
        from ptflops import get_model_complexity_info

        ops, params = get_model_complexity_info(
            model,
            tuple(x.shape[1:]),
            print_per_layer_stat=False,
            as_strings=False,
            input_constructor=lambda res: x,
            backend=how.split("-")[1],
        )
    return float(ops), float(params)


def worker(convention: str, how: str, which: str, size: int) -> None:
    import contextlib
    import io
    import warnings

    import torch

    from attnbench.attach.backbone import build
    from attnbench.measures.conventions import count_as

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    for backbone, module, options in pairs(which):
        try:
            model = build(backbone, module, input_size=size, **options)
        except Exception as exc:  # not a pair (sk on a network without a ResNet 3x3)
            print(json.dumps({"pair": [backbone, module], "skipped": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        try:
            ours = count_as(model, torch.randn(1, 3, size, size), convention)
            ours = [ours.ops, ours.params]
        except Exception as exc:  # a refusal ("cannot count this family") is a result too
            ours = f"{type(exc).__name__}: {exc}"
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                real = run_tool(how, model, torch.randn(1, 3, size, size))
            except Exception as exc:
                real = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"pair": [backbone, module], "ours": ours, "real": real}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", default=os.environ.get("ATTNBENCH_PEERS", "/tmp/peers"))
    p.add_argument(
        "--set",
        default="audit",
        help="'audit' (68 pairs), a suite name/path (its backbones x modules) or backbone/module[,backbone/module...]",
    )
    p.add_argument("--only", action="append", default=[], help="one convention (repeatable)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", help="also write every pair's counts here")
    p.add_argument("--worker", nargs=2, metavar=("CONVENTION", "HOW"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker, args.set, args.size)
        return 0
    failed, report = False, {}
    for convention, (pattern, how) in TOOLS.items():
        if args.only and convention not in args.only:
            continue
        folders = sorted(glob.glob(os.path.join(args.peers, pattern)))
        if not folders:
            print(f"{convention}: skipped, no {pattern} under {args.peers} (install it there, see the docstring)")
            continue
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([folders[0], os.getcwd()]))
        start = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--worker", convention, how, "--set", args.set, "--size", str(args.size)],
            env=env,
            capture_output=True,
            text=True,
        )
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0:
            print(f"{convention}: the worker failed: {out.stderr.strip().splitlines()[-1:]}")
            failed = True
            continue
        counted = [r for r in rows if "skipped" not in r]
        exact = [
            r
            for r in counted
            if isinstance(r["ours"], list)
            and isinstance(r["real"], list)
            and r["ours"] == [int(r["real"][0]), int(r["real"][1])]
            and r["real"][0] == int(r["real"][0])
        ]
        refused = [r for r in counted if isinstance(r["ours"], str)]
        print(
            f"{convention} vs {os.path.basename(folders[0])}: {len(exact)} of {len(counted)} pairs exact"
            f"{f', {len(refused)} refused' if refused else ''} ({time.time() - start:.0f} s)"
        )
        for r in counted:
            if r in exact:
                continue
            if isinstance(r["ours"], str):
                print(f"  {'/'.join(r['pair'])}: refused ({r['ours']}); the tool says {r['real']}")
                continue
            failed = True
            if isinstance(r["real"], str):
                print(f"  {'/'.join(r['pair'])}: ours {r['ours']}, the tool failed: {r['real']}")
                continue
            (o, op), (t, tp) = r["ours"], r["real"]
            print(
                f"  {'/'.join(r['pair'])}: ops ours {o:,} tool {t:,.0f} ({(o - t) / t:+.2%}); "
                f"params ours {op:,} tool {tp:,.0f} ({op - tp:+,.0f})"
            )
        report[convention] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
