"""The command line: runs, tables, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from formulas import se_params

from attnbench.cli import main

SMALL = """
name: small
backbones: [resnet18]
modules: [none, se, cbam, nonlocal]
input_size: 64
metrics: [params, flops, latency_cpu, latency_gpu]
latency: {threads: 1, warmup: 1, rounds: 2, min_time: 0.01, min_iters: 2}
"""


def cli(args, capsys):
    """Run the real entry point in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["attnbench", *args]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return info.value.code or 0, out.out, out.err


def test_list_modules(capsys):
    code, out, _ = cli(["list", "modules"], capsys)
    assert code == 0 and {"se", "cbam", "nonlocal"} <= set(out.split())


def test_run_writes_table_records_and_csv(tmp_path, capsys):
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    code, out, err = cli(["run", "--suite", str(suite), "--out", str(tmp_path / "res")], capsys)
    assert code == 0, err
    md = (tmp_path / "res" / "small.md").read_text()
    assert out.strip().endswith(md.strip().splitlines()[-1])
    rows = [ln for ln in md.splitlines() if ln.startswith("| resnet18")]
    assert [r.split(" | ")[1] for r in rows] == ["none", "se", "cbam", "nonlocal"]
    assert "| resnet18 | se | block x8 | 11.779 | +89,080 | +0.76% |" in md
    assert "| resnet18 | nonlocal | stage 3 | 11.822 | +132,224 |" in md
    assert "threads 1" in md and "torch " in md and "timm " in md
    records = [json.loads(l) for l in (tmp_path / "res" / "small.jsonl").read_text().splitlines()]
    assert len(records) == 16
    assert {r["status"] for r in records if r["metric"] == "latency_gpu"} == ({"ok"} if _cuda() else {"skipped"})
    lat = [r for r in records if r["metric"] == "latency_cpu"]
    assert all(r["measurement"]["stats"]["runs"] >= 4 and r["measurement"]["unit"] == "ms" for r in lat)
    assert all(r["env"]["threads"] == 1 for r in lat)
    assert (tmp_path / "res" / "small.csv").read_text().count("\n") == 17

    # the table is a pure function of the store
    before = md
    (tmp_path / "res" / "small.md").unlink()
    code, out, _ = cli(["report", str(tmp_path / "res" / "small.jsonl")], capsys)
    assert code == 0 and (tmp_path / "res" / "small.md").read_text() == before


def _cuda():
    import torch

    return torch.cuda.is_available()


def run_cli_subprocess(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "attnbench.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_unknown_module_exits_2_with_one_line(tmp_path):
    p = run_cli_subprocess("measure", "resnet18", "sse")
    assert p.returncode == 2
    assert (
        p.stderr.strip()
        == "error: unknown module 'sse'; did you mean 'se', 'sge', 'ese'? (see `attnbench list modules`)"
    )


def test_unknown_backbone_and_suite_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [resnet5]\nmodules: [se]\n")
    p = run_cli_subprocess("run", "--suite", str(bad), "--out", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith(
        f"error: {bad}: field 'backbones[0]': unknown backbone 'resnet5'; did you mean"
    )
    assert "'resnet50'" in line


def test_measure_one_combination(capsys):
    code, out, _ = cli(["measure", "resnet50", "se", "--input-size", "224"], capsys)
    assert code == 0
    assert "params 28,088,024 (attention 2,530,992)" in out
    # conv/linear/matmul = ResNet-50's 4,089,184,256 + the SE FC weights 2,514,944 (fvcore's own SE delta);
    # the attention part is the hand-derived SE delta of tests/test_flops.py; both counters agree
    assert "MACs 4,130,902,704 = conv/linear/matmul 4,091,699,200 + element-wise 28,089,520 + norm 11,113,984" in out
    assert "attention 13,569,712; fvcore alone 4,114,027,520; dispatch counter 4,130,902,704 (agrees)" in out
    assert "unhandled operators: none" in out
    from formulas import RESNET50_STAGES, resnet50_activations, se_activations

    act = resnet50_activations() + sum(n * se_activations(c, side) for n, c, side in RESNET50_STAGES)
    assert f"activations {act:,} elements/image" in out and "saved for backward" in out


def test_compare_two_runs(tmp_path, capsys):
    from attnbench.harness.runner import run_suite
    from attnbench.suite.parse import parse_suite

    spec = {
        "name": "cmp",
        "backbones": ["resnet18"],
        "modules": ["none", "se"],
        "input_size": 32,
        "metrics": ["params"],
    }
    run_suite(parse_suite(spec, "a.yaml"), tmp_path / "a")
    run_suite(
        parse_suite(dict(spec, modules=["none", {"name": "se", "module": "se", "reduction": 4}]), "b.yaml"),
        tmp_path / "b",
    )
    code, out, _ = cli(["compare", str(tmp_path / "a" / "cmp.jsonl"), str(tmp_path / "b" / "cmp.jsonl")], capsys)
    assert code == 0
    assert (
        "| resnet18 | none | params | M parameters | 11.690 | 11.690 | +0.00% |" in out
    )  # the unit of the numbers shown
    # SE at r=4 instead of 16: 2*C*C/4 + C/4 + C per block, against 2*C*C/16 + C/16 + C
    se16 = sum(se_params(c, 16) for c in (64, 64, 128, 128, 256, 256, 512, 512))
    se4 = sum(se_params(c, 4) for c in (64, 64, 128, 128, 256, 256, 512, 512))
    pct = (se4 - se16) / (11_689_512 + se16) * 100
    assert f"| resnet18 | se | params | M parameters | 11.779 | {(11_689_512 + se4) / 1e6:.3f} | {pct:+.2f}% |" in out


def test_gpu_suite_skips_cleanly_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only path")
    from attnbench.harness.runner import run_suite
    from attnbench.suite.load import load_suite

    suite = load_suite("gpu")
    suite.metrics = [m for m in suite.metrics if m.endswith("_gpu")]
    result = run_suite(suite, tmp_path)
    assert result.exit_code == 0 and result.skipped == 15 and result.ok == 0
    assert "- skipped latency_gpu, memory_gpu, train_step_gpu: no CUDA device here" in (tmp_path / "gpu.md").read_text()


def test_out_of_memory_gets_a_fix():
    import torch

    from attnbench.harness.execute import error_info

    info = error_info(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert info == {
        "type": "OutOfMemory",
        "message": "CUDA out of memory. Tried to allocate 2.00 GiB; lower batch_size or input_size",
    }


def test_subset_run_then_full_resume_keeps_table_order(tmp_path, capsys):
    suite = tmp_path / "sub.yaml"
    suite.write_text(
        "name: sub\nbackbones: [resnet18, resnet34]\nmodules: [none, se, cbam]\ninput_size: 32\nmetrics: [params]\n"
    )
    out = tmp_path / "res"
    code, _, err = cli(["run", "--suite", str(suite), "--out", str(out), "-q", "-b", "resnet34", "-m", "se"], capsys)
    assert code == 0 and "1 ok" in err
    code, _, err = cli(["run", "--suite", str(suite), "--out", str(out), "-q", "--resume"], capsys)
    assert code == 0 and "5 ok" in err and "1 reused" in err
    rows = [ln.split(" | ")[:2] for ln in (out / "sub.md").read_text().splitlines() if ln.startswith("| resnet")]
    assert rows == [
        ["| resnet18", "none"],
        ["| resnet18", "se"],
        ["| resnet18", "cbam"],
        ["| resnet34", "none"],
        ["| resnet34", "se"],
        ["| resnet34", "cbam"],
    ]
    # A subset resumed into the store keeps the other backbones' rows in the table (issue #33).
    code, _, err = cli(
        ["run", "--suite", str(suite), "--out", str(out), "-q", "--resume", "-b", "resnet18", "-M", "params"], capsys
    )
    assert code == 0 and "0 ok" in err and "3 reused" in err
    assert [
        ln.split(" | ")[:2] for ln in (out / "sub.md").read_text().splitlines() if ln.startswith("| resnet")
    ] == rows
    code, _, err = cli(["run", "--suite", str(suite), "--out", str(out), "-q", "-m", "eca"], capsys)
    assert code == 2 and "unknown module 'eca'" in err and "this suite has none, se, cbam" in err
    code, _, err = cli(["run", "--suite", str(suite), "--out", str(out), "-q", "-M", "latency_cpu"], capsys)
    assert code == 2 and "unknown metric 'latency_cpu'" in err and "this suite measures params" in err
