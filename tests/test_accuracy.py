"""Datasets, seeded training and accuracy tables (digits: seconds; Fashion-MNIST when installed)."""

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.errors import AttnBenchError
from attnbench.harness.runner import run_suite
from attnbench.records.record import Record
from attnbench.registry import DATASETS
from attnbench.report.accuracy import accuracy_rows, render_accuracy
from attnbench.report.plots import curves_plot
from attnbench.suite.load import load_suite
from attnbench.suite.parse import parse_suite
from attnbench.train.data import FASHION_MNIST_DEBIAN, digits, fashion_mnist, read_idx
from attnbench.train.loop import train_cell, validate_training

TINY = {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "threads": 1}


def test_datasets_are_registered_through_entry_points():
    assert {"fashion_mnist", "digits", "cifar10", "cifar100"} <= set(DATASETS.names())


def test_digits_split():
    d = digits()
    assert len(d.train_y) + len(d.test_y) == 1797
    assert d.train_x.shape == (1347, 1, 8, 8) and d.test_x.shape == (450, 1, 8, 8) and d.num_classes == 10
    assert d.train_x.dtype == torch.uint8 and int(d.train_x.max()) == 255
    # stratified: every class keeps its share in the test split (within one image)
    full = np.bincount(np.concatenate([d.train_y.numpy(), d.test_y.numpy()]), minlength=10)
    assert np.all(np.abs(np.bincount(d.test_y.numpy(), minlength=10) - full * 0.25) <= 1)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_local_root(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(tmp_path / "train-labels-idx1-ubyte.gz").tolist() == [i % 10 for i in range(20)]
    d = fashion_mnist(root=str(tmp_path))
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(AttnBenchError, match=r"Fashion-MNIST not found in .*apt-get install dataset-fashion-mnist"):
        fashion_mnist(root=str(tmp_path))


@pytest.mark.skipif(not Path(FASHION_MNIST_DEBIAN).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_full_counts():
    d = fashion_mnist()
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28) and d.num_classes == 10
    assert np.bincount(d.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(d.test_y.numpy()).tolist() == [1000] * 10


def test_seeded_digits_training_is_bit_for_bit_reproducible():
    ds = {"name": "digits", "train_subset": 300}
    a = train_cell("resnet18", "se", {}, ds, TINY, seed=3).stats
    b = train_cell("resnet18", "se", {}, ds, TINY, seed=3).stats
    c = train_cell("resnet18", "se", {}, ds, TINY, seed=4).stats
    for key in ("top1", "top5", "final_train_loss", "weights_sha1", "steps", "train_size", "test_size"):
        assert a[key] == b[key], key
    assert a["weights_sha1"] != c["weights_sha1"]
    assert a["train_size"] == 300 and a["test_size"] == 450 and a["steps"] == 300 // 64
    assert [p["epoch"] for p in a["curve"]] == [1] and a["curve"][0]["test_top1"] == a["top1"]


def _record(label, seed, curve, position):
    """A stored accuracy record as the runner writes it, with a hand-made curve (no training)."""
    stats = {
        "top1": curve[-1],
        "top5": 99.0,
        "final_train_loss": 0.5,
        "train_images_per_s": 100.0,
        "params": 1e6,
        "wall_s": 10.0,
        "train_size": 1000,
        "curve": [
            {"epoch": e + 1, "images_seen": 1000 * (e + 1), "test_top1": t, "test_loss": 1.0, "train_loss": 0.5}
            for e, t in enumerate(curve)
        ],
    }
    return Record.from_dict(
        {
            "key": f"{label}-{seed}",
            "metric": "accuracy",
            "status": "ok",
            "suite": "hand",
            "backbone": "resnet18",
            "label": label,
            "module": label,
            "position": [0, position],
            "env": {"torch": "x"},
            "measurement": {
                "metric": "accuracy",
                "value": curve[-1],
                "unit": "% top-1",
                "method": "hand",
                "stats": stats,
            },
            "config": {
                "seed": seed,
                "dataset": {"name": "digits"},
                "training": {"epochs": len(curve), "batch_size": 100},
            },
        }
    )


def test_table_interval_verdict_and_convergence_from_records():
    # baseline final top-1 [88, 89, 90], still +3 pp in its last epoch (mean curve 86 -> 89): not converged.
    # se final [90, 91, 92]: Δ = +2, Welch [-0.27, +4.27] (worked by hand in test_stats.py), MDD 3.04.
    # cbam final [80, 82, 84] (s² = 4): Δ = -7, se = sqrt(4/3 + 1/3) = 1.290994, df = 50/17 (test_stats.py),
    # t(0.975, 2.941) = 3.218759 -> half-width 4.155400 -> [-11.16, -2.84]: worse.
    recs = [_record("none", s, [85 + s, 88 + s], 0) for s in range(3)]
    recs += [_record("se", s, [92 + s, 90 + s], 1) for s in range(3)]  # best at epoch 1 (mean 93), final mean 91
    recs += [_record("cbam", s, [70, 80 + 2 * s], 2) for s in range(3)]
    recs += [
        dataclasses.replace(_record("nonlocal", 0, [50], 3), status="skipped", measurement=None)
    ]  # a cuda cell, no CUDA here
    rows = {r["label"]: r for r in accuracy_rows(recs)}
    assert rows["se"]["best_top1"] == 93.0 and rows["se"]["best_epoch"] == 1
    assert rows["none"]["curve"]["test_top1"] == [86.0, 89.0] and rows["none"]["curve"]["images_seen"] == [1000, 2000]
    md = render_accuracy(recs)
    lines = {ln.split(" | ")[1]: ln.split(" | ") for ln in md.splitlines() if ln.startswith("| resnet18")}
    assert lines["se"][3:9] == [
        "91.00 ± 1.00",
        "93.00",
        "1",
        "+2.00 [-0.27, +4.27]",
        "no detectable difference ‡",
        "3.04",
    ]
    assert lines["cbam"][6:8] == ["-7.00 [-11.16, -2.84]", "worse ‡"]
    assert lines["none"][6:9] == ["—", "—", "—"]
    assert lines["nonlocal"][2:5] == ["0/1", "skipped", "—"]
    assert "not converged: Δ describes this budget" in md and "rose +3.00 pp in its last epoch" in md
    assert "Welch's t" in md and "Budget: digits, 2 epoch(s) x 1,000 training images = 2,000 images seen per cell" in md


def _trained(label, seed, finals, position, epochs, peak=0.1, **training):
    """A record as train_cell writes it (with its full recipe): top-1 0.2 pp below `finals` one epoch before the
    end, the schedule's LR at 1% of its peak at the last epoch."""
    recipe = {
        "epochs": epochs,
        "batch_size": 100,
        "optimizer": "sgd",
        "lr": peak,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "warmup_steps": 10,
        "label_smoothing": 0.1,
        "threads": 2,
        "amp": "bf16",
        "channels_last": True,
        "compile": True,
        "stem": {"stride": 2},
        **training,
    }
    curve = [
        {
            "epoch": e + 1,
            "images_seen": 1000 * (e + 1),
            "test_top1": finals - 0.2 * (epochs - 1 - e),
            "test_loss": 1.0,
            "train_loss": 0.5,
            "lr": peak * (0.01 if e == epochs - 1 else 0.5),
        }
        for e in range(epochs)
    ]
    stats = {
        "top1": finals,
        "final_train_loss": 0.5,
        "train_images_per_s": 100.0,
        "params": 1e6,
        "wall_s": 10.0,
        "train_size": 1000,
        "threads": 2,
        "curve": curve,
        "recipe": recipe,
    }
    return Record.from_dict(
        {
            "key": f"{label}-{seed}",
            "metric": "accuracy",
            "status": "ok",
            "suite": "hand",
            "backbone": "resnet18",
            "label": label,
            "module": label.split("-")[0],
            "position": [0, position],
            "env": {"torch": "x"},
            "measurement": {"metric": "accuracy", "value": finals, "unit": "% top-1", "method": "hand", "stats": stats},
            "config": {"seed": seed, "dataset": {"name": "digits"}, "training": {"epochs": epochs}},
        }
    )


def test_settings_line_names_the_whole_recipe_and_rows_trained_otherwise():
    recs = [_trained("none", s, 88.0 + 0.2 * s, 0, epochs=2) for s in range(3)]
    recs += [_trained("none-fp32", s, 88.1 + 0.2 * s, 1, epochs=2, amp=None, compile=False) for s in range(3)]
    md = render_accuracy(recs)
    assert (
        "Recipe: batch 100; SGD lr 0.1, Nesterov momentum 0.9, weight decay 0.0005; 10 warm-up steps then cosine to 0 "
        "(per step); label smoothing 0.1; stem {'stride': 2}; cpu, 2 threads, bf16 autocast, channels_last, "
        "torch.compile (inductor)."
    ) in md
    assert "Rows trained otherwise: none-fp32: amp None, compile False." in md
    # the first `none` row is the baseline: none-fp32 is compared with it (88.3 - 88.2 = +0.10)
    rows = {r["label"]: r for r in accuracy_rows(recs)}
    assert rows["none"]["delta"] is None and rows["none-fp32"]["delta"].diff == pytest.approx(0.1)


def test_annealed_lr_alone_cannot_show_a_plateau():
    # last-epoch gain +0.2 pp passes the 0.5 pp rule, but the LR ended at 1% of its peak: the note says so
    recs = [_trained("none", s, 88.0 + 0.2 * s, 0, epochs=2) for s in range(3)]
    recs += [_trained("se", s, 88.1 + 0.2 * s, 1, epochs=2) for s in range(3)]
    md = render_accuracy(recs)
    assert "resnet18: baseline's last epoch +0.20 pp (<= 0.5 pp); but the LR had decayed to 1% of its peak" in md
    assert "only a longer run of the baseline" in md and "‡" not in md.split("\n- ")[0]


def test_a_longer_run_of_the_baseline_checks_the_plateau():
    # baseline finals [88.0, 88.2, 88.4] (mean 88.2); none-2x, 4 epochs, [88.3, 88.5, 88.7] (mean 88.5): Δ +0.30,
    # s² = 0.04 each, se = sqrt(0.08/3) = 0.163299, df = 4, t(0.975, 4) = 2.776445 -> half 0.453391: [-0.15, +0.75]
    recs = [_trained("none", s, 88.0 + 0.2 * s, 0, epochs=2) for s in range(3)]
    recs += [_trained("se", s, 87.0 + 0.2 * s, 1, epochs=2) for s in range(3)]
    longer = [_trained("none-2x", s, 88.3 + 0.2 * s, 2, epochs=4) for s in range(3)]
    md = render_accuracy(recs + longer)
    assert (
        "resnet18: baseline's last epoch +0.20 pp (<= 0.5 pp), and trained 2x as many epochs (`none-2x`) it scores "
        "+0.30 pp [-0.15, +0.75]: at its plateau (<= 0.5 pp)."
    ) in md
    assert "Rows trained otherwise: none-2x: epochs 4." in md and "not converged" not in md.split("- Δtop-1")[0]
    se = next(ln for ln in md.splitlines() if ln.startswith("| resnet18 | se |")).split(" | ")
    assert se[6:8] == ["-1.00 [-1.45, -0.55]", "worse"]  # against `none` (mean 88.2), not `none-2x`
    # the longer run still gains 0.9 pp: not converged, and every verdict carries ‡
    longer = [_trained("none-2x", s, 88.9 + 0.2 * s, 2, epochs=4) for s in range(3)]
    md = render_accuracy(recs + longer)
    assert (
        "**not converged: Δ describes this budget** (the baseline trained 2x as many epochs, `none-2x`, scores +0.90 pp"
        in md
    )
    se = next(ln for ln in md.splitlines() if ln.startswith("| resnet18 | se |")).split(" | ")
    assert se[7] == "worse ‡"
    # a longer run under other settings (here another LR) is no plateau check
    other = [_trained("none-2x", s, 88.9 + 0.2 * s, 2, epochs=4, peak=0.2) for s in range(3)]
    assert "as many epochs" not in render_accuracy(recs + other)


def test_diverging_cell_fails_with_nan_and_others_land(tmp_path):
    suite = parse_suite(
        {
            "name": "diverge",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none", {"name": "se-hot", "module": "se", "training": {"lr": 1.0e12, "optimizer": "sgd"}}],
            "dataset": {"name": "digits", "train_subset": 300},
            "training": TINY,
            "seeds": [0, 1],
        },
        "diverge.yaml",
    )
    result = run_suite(suite, tmp_path)
    status = {(r.label, r.seed): r for r in result.records}
    assert {k: r.status for k, r in status.items()} == {
        ("none", 0): "ok",
        ("none", 1): "ok",
        ("se-hot", 0): "failed",
        ("se-hot", 1): "failed",
    }
    err = status[("se-hot", 0)].error
    assert err["type"] == "NonFiniteLoss" and "lower training.lr" in err["message"]
    md = (tmp_path / "diverge.md").read_text()
    assert "| resnet18 | none | 2 |" in md and "| resnet18 | se-hot | 0/2 | failed (NonFiniteLoss) |" in md
    assert result.exit_code == 1


def test_smoke_suite_table_and_plot(tmp_path):
    suite = load_suite("accuracy-smoke")
    suite.seeds = [0]
    suite.training = dict(suite.training, epochs=1)
    suite.dataset = dict(suite.dataset, train_subset=300, test_subset=100)  # per-epoch scoring stays cheap
    (tmp_path / "overhead.jsonl").write_text("")  # no overhead records: latency column stays empty
    result = run_suite(suite, tmp_path)
    assert result.ok == 4
    md = (tmp_path / "accuracy-smoke.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| resnet18")]
    assert [r.split(" | ")[1] for r in rows] == ["none", "se", "cbam", "nonlocal"]
    se_row = rows[1].split(" | ")
    assert se_row[13] == "+0.80%"  # params from the trained model: 11,173,962 -> 11,263,042 (in_chans=1, 10 classes)
    assert se_row[7] == "n/a (< 2 seeds)" and "a single epoch cannot show convergence" in md
    png = tmp_path / "accuracy-smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves_plot(result.records, tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_suites_validate():
    s = load_suite("accuracy")
    assert s.kind == "accuracy" and len(s.seeds) >= 3 and s.dataset["name"] == "fashion_mnist"
    assert [v.label for v in s.variants] == ["none", "se", "cbam", "nonlocal", "none-12ep"]
    # the plateau check differs from the baseline in its epoch count only
    control = s.variants[-1]
    assert control.module == "none" and control.training == {"epochs": 12} and s.training["epochs"] == 8
    # every speed-up of the default recipe is what the full recipes use too (same for every module)
    speedups = load_suite("accuracy-speedups")
    assert [v.label for v in speedups.variants] == ["fp32", "bf16-channels_last"]
    # the default recipe leaves precision and memory format to the host (amp: auto); the speed-up study pins the two
    # candidates auto chooses between (fp32 and bf16 + channels_last), everything else identical
    pinned = ("amp", "channels_last")
    assert s.training["amp"] == s.training["channels_last"] == "auto"
    assert {k: v for k, v in speedups.training.items() if k not in pinned} == {
        k: v for k, v in s.training.items() if k not in pinned
    }
    assert speedups.dataset == s.dataset and (speedups.training["amp"], speedups.training["channels_last"]) == (
        "bf16",
        True,
    )
    full, gpu = load_suite("accuracy-full"), load_suite("accuracy-gpu")
    assert full.training["amp"] == full.training["channels_last"] == "auto"
    assert full.dataset == {"name": "fashion_mnist"} and len(full.seeds) >= 3 and full.training["epochs"] >= 20
    assert gpu.training["device"] == "cuda" and gpu.training["amp"] == "bf16" and gpu.training["channels_last"] is True
    for suite in (s, speedups, full, gpu, load_suite("accuracy-smoke"), load_suite("accuracy-full-epoch")):
        assert validate_training(suite.training, suite.dataset) == [], suite.name
    with pytest.raises(AttnBenchError, match="field 'training.epoch': unknown setting"):
        parse_suite(
            {
                "kind": "accuracy",
                "backbones": ["resnet18"],
                "modules": ["se"],
                "dataset": "digits",
                "training": {"epoch": 1},
            },
            "x.yaml",
        )
    with pytest.raises(AttnBenchError, match="field 'dataset.name': unknown dataset 'digit'; did you mean 'digits'"):
        parse_suite({"kind": "accuracy", "backbones": ["resnet18"], "modules": ["se"], "dataset": "digit"}, "x.yaml")


def test_cifar_without_files_says_how_to_get_them(tmp_path):
    from attnbench.train.data import cifar10

    with pytest.raises(AttnBenchError, match=r"CIFAR10 not found in .*--data-root.*--download"):
        cifar10(root=str(tmp_path))
