"""Each ``--as`` convention against the real tool it names, where that tool is installed; skipped otherwise.

The tools are never attnbench dependencies (CI has none). Install them into scratch folders under
``$ATTNBENCH_PEERS`` (default /tmp/peers) as benchmarks/peer_audit.py's docstring shows; each tool then runs in
its own process (the thop versions all import as ``thop``) on the hand-counted models of test_conventions.py and
on attnbench-built models of three families (timm's fused BatchNormAct2d in MobileNetV2, LayerNorm and bmm in
GCNet, SiLU and bmm in EfficientNet + Non-Local), and must print exactly what the convention counts.
benchmarks/peer_audit.py runs the full audit (68 pairs, or the zoo).
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.attach.backbone import build
from attnbench.measures.conventions import count_as

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from peer_audit import TOOLS  # noqa: E402

PEERS = os.environ.get("ATTNBENCH_PEERS", "/tmp/peers")
PAIRS = [("mobilenetv2_100", "eca"), ("resnet18", "gc"), ("efficientnet_b0", "nonlocal")]
SIZE = 64

# In the tool's process: the real tool on the same models (built the same way), as JSON {name: [ops, params]}.
WORKER = """
import contextlib, io, json, sys, warnings
import torch
warnings.filterwarnings("ignore")
from peer_audit import run_tool
import test_conventions as t
from attnbench.attach.backbone import build
models = {"small": (t.small(), t.X), "fused": (t.fused(), torch.randn(1, 3, 4, 4)),
          "products": (t.Products(), torch.randn(1, 2, 3, 3)), "gate": (t.Gate(), torch.randn(1, 4, 3, 3))}
for b, m in PAIRS:
    models[b + "/" + m] = (build(b, m, input_size=SIZE), torch.randn(1, 3, SIZE, SIZE))
out = {}
for name, (model, x) in models.items():
    with contextlib.redirect_stdout(io.StringIO()):
        out[name] = run_tool(HOW, model, x)
print(json.dumps(out))
"""


def _folder(pattern):
    found = sorted(glob.glob(os.path.join(PEERS, pattern)))
    return found[0] if found else None


@pytest.mark.parametrize("convention", list(TOOLS))
def test_convention_prints_what_the_tool_prints(convention):
    import test_conventions as t

    pattern, how = TOOLS[convention]
    folder = _folder(pattern)
    if folder is None:
        pytest.skip(f"{convention}: the real tool is not installed under {PEERS} ({pattern})")
    code = f"PAIRS = {PAIRS!r}\nSIZE = {SIZE}\nHOW = {how!r}\n" + WORKER
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([folder, str(ROOT / "benchmarks"), str(ROOT / "tests"), str(ROOT)])
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    real = json.loads(run.stdout.strip().splitlines()[-1])
    models = {
        "small": (t.small(), t.X),
        "fused": (t.fused(), torch.randn(1, 3, 4, 4)),
        "products": (t.Products(), torch.randn(1, 2, 3, 3)),
        "gate": (t.Gate(), torch.randn(1, 4, 3, 3)),
    }
    for b, m in PAIRS:
        models[f"{b}/{m}"] = (build(b, m, input_size=SIZE), torch.randn(1, 3, SIZE, SIZE))
    ours = {}
    for name, (model, x) in models.items():
        c = count_as(model, x, convention)
        ours[name] = [c.ops, c.params]
    assert ours == {name: [int(ops), int(params)] for name, (ops, params) in real.items()}
