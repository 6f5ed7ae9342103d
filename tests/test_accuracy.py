"""Datasets, seeded training and accuracy tables (digits: seconds; Fashion-MNIST when installed)."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.data import FASHION_MNIST_DEBIAN, digits, fashion_mnist, read_idx
from attnbench.errors import AttnBenchError
from attnbench.registry import DATASETS
from attnbench.runner import run_suite
from attnbench.suite import load_suite, parse_suite
from attnbench.train import train_cell

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


def test_diverging_cell_fails_with_nan_and_others_land(tmp_path):
    suite = parse_suite({
        "name": "diverge", "kind": "accuracy", "backbones": ["resnet18"],
        "modules": ["none", {"name": "se-hot", "module": "se", "training": {"lr": 1.0e12, "optimizer": "sgd"}}],
        "dataset": {"name": "digits", "train_subset": 300}, "training": TINY, "seeds": [0, 1],
    }, "diverge.yaml")
    result = run_suite(suite, tmp_path)
    status = {(r["label"], r["config"]["seed"]): r for r in result.records}
    assert {k: r["status"] for k, r in status.items()} == {
        ("none", 0): "ok", ("none", 1): "ok", ("se-hot", 0): "failed", ("se-hot", 1): "failed"}
    err = status[("se-hot", 0)]["error"]
    assert err["type"] == "NonFiniteLoss" and "lower training.lr" in err["message"]
    md = (tmp_path / "diverge.md").read_text()
    assert "| resnet18 | none | 2 |" in md and "| resnet18 | se-hot | 0/2 | failed (NonFiniteLoss) |" in md
    assert result.exit_code == 1


def test_smoke_suite_table_and_plot(tmp_path):
    suite = load_suite("accuracy-smoke")
    suite.seeds = [0]
    suite.training = dict(suite.training, epochs=1)
    suite.dataset = dict(suite.dataset, train_subset=300)
    (tmp_path / "overhead.jsonl").write_text("")  # no overhead records: latency column stays empty
    result = run_suite(suite, tmp_path)
    assert result.ok == 4
    md = (tmp_path / "accuracy-smoke.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| resnet18")]
    assert [r.split(" | ")[1] for r in rows] == ["none", "se", "cbam", "nonlocal"]
    se_row = rows[1].split(" | ")
    assert se_row[10] == "+0.80%"  # params from the trained model: 11,173,962 -> 11,263,042 (in_chans=1, 10 classes)
    png = tmp_path / "accuracy-smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_suites_validate():
    s = load_suite("accuracy")
    assert s.kind == "accuracy" and len(s.seeds) >= 3 and s.dataset["name"] == "fashion_mnist"
    assert [v.label for v in s.variants] == ["none", "se", "cbam", "nonlocal"]
    with pytest.raises(AttnBenchError, match="field 'training.epoch': unknown setting"):
        parse_suite({"kind": "accuracy", "backbones": ["resnet18"], "modules": ["se"], "dataset": "digits",
                     "training": {"epoch": 1}}, "x.yaml")
    with pytest.raises(AttnBenchError, match="field 'dataset.name': unknown dataset 'digit'; did you mean 'digits'"):
        parse_suite({"kind": "accuracy", "backbones": ["resnet18"], "modules": ["se"], "dataset": "digit"}, "x.yaml")


def test_cifar_without_files_says_how_to_get_them(tmp_path):
    from attnbench.data import cifar10

    with pytest.raises(AttnBenchError, match=r"CIFAR10 not found in .*--data-root.*--download"):
        cifar10(root=str(tmp_path))
