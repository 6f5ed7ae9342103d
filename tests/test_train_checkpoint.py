"""Per-epoch curves, checkpoint/resume bit-for-bit, 0-step refusal, training validation, CUDA skips."""

import math

import pytest
import torch

from attnbench.errors import AttnBenchError
from attnbench.train.data import train_size
from attnbench.train.loop import TRAINING_KEYS, TrainConfig, train_cell, validate_training

DS = {"name": "digits", "train_subset": 60, "test_subset": 50}  # 3 steps of 16 per epoch: seconds
TINY3 = {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "threads": 1}


class Killed(Exception):
    """Stands in for SIGKILL/preemption right after an epoch's checkpoint is written."""


def _kill_after(k):
    def hook(point):
        if point["epoch"] == k:
            raise Killed(k)

    return hook


@pytest.fixture(scope="module")
def whole():
    """One uninterrupted 3-epoch run, shared by the curve and resume tests."""
    return train_cell("resnet18", "se", {}, DS, TINY3, seed=1).stats


def test_curve_is_stored_per_epoch(whole):
    s = whole
    curve = s["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    # 60 images // 16 = 3 steps of 16 images per epoch
    assert [p["images_seen"] for p in curve] == [48, 96, 144]
    assert set(curve[0]) >= {"epoch", "images_seen", "test_top1", "test_loss", "train_loss", "lr", "s"}
    assert s["top1"] == curve[-1]["test_top1"] and s["final_train_loss"] == curve[-1]["train_loss"]
    assert all(0 <= p["test_top1"] <= 100 and p["test_loss"] > 0 for p in curve)
    # cosine to zero, no warm-up: the last step (index 8 of 9) has lr 0.05 * (1 + cos(pi * 8/9)) / 2
    assert curve[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 8 / 9)))


@pytest.mark.parametrize("k", [1, 2])
def test_killed_after_epoch_k_then_resumed_equals_uninterrupted(tmp_path, k, whole):
    ckpt = tmp_path / "checkpoints" / "cell.pt"
    with pytest.raises(Killed):
        train_cell("resnet18", "se", {}, DS, TINY3, seed=1, checkpoint_path=ckpt, on_epoch=_kill_after(k))
    assert ckpt.is_file()
    resumed = train_cell("resnet18", "se", {}, DS, TINY3, seed=1, checkpoint_path=ckpt).stats
    assert resumed["resumed_from_epoch"] == k
    assert resumed["weights_sha1"] == whole["weights_sha1"]
    assert [p["test_top1"] for p in resumed["curve"]] == [p["test_top1"] for p in whole["curve"]]
    assert resumed["steps"] == whole["steps"] == 9
    assert not ckpt.exists()  # deleted once the cell finished


def test_checkpoint_of_other_settings_is_not_reused(tmp_path):
    ckpt = tmp_path / "cell.pt"
    with pytest.raises(Killed):
        train_cell("resnet18", "se", {}, DS, TINY3, seed=1, checkpoint_path=ckpt, on_epoch=_kill_after(1))
    other = train_cell("resnet18", "se", {}, DS, dict(TINY3, epochs=1), seed=2, checkpoint_path=ckpt).stats
    assert other["resumed_from_epoch"] == 0 and other["steps"] == 3 and not ckpt.exists()


def test_zero_steps_is_refused_not_scored():
    with pytest.raises(AttnBenchError, match=r"batch_size 512 exceeds the 60 training images: 0 steps"):
        train_cell("resnet18", "none", {}, DS, dict(TINY3, epochs=1, batch_size=512), seed=0)


def test_training_keys_come_from_the_config():
    assert {"device", "amp", "checkpoint", "channels_last", "epochs"} <= set(TRAINING_KEYS)
    assert TRAINING_KEYS == tuple(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    "training, field, text",
    [
        ({"optimizer": "adam"}, "optimizer", "'sgd' or 'adamw'"),
        ({"lr": 0}, "lr", "> 0"),
        ({"lr": float("nan")}, "lr", "> 0"),
        ({"weight_decay": -1e-4}, "weight_decay", ">= 0"),
        ({"momentum": 1.0}, "momentum", "[0, 1)"),
        ({"device": "gpu"}, "device", "'cpu', 'cuda' or 'cuda:N'"),
        ({"amp": "fp8"}, "amp", "'bf16', 'fp16' or 'auto'"),
        ({"amp": "fp16"}, "amp", "use bf16 on the CPU"),
        ({"batch_size": 1400}, "batch_size", "exceeds the 1347 training images of digits"),
        ({"epochs": 0}, "epochs", "positive integer"),
    ],
)
def test_validate_training_names_the_field(training, field, text):
    problems = validate_training(training, {"name": "digits"})
    assert [f for f, _ in problems] == [field] and text in problems[0][1]


def test_validate_training_accepts_gpu_settings():
    assert (
        validate_training({"device": "cuda:1", "amp": "fp16", "channels_last": True}, {"name": "fashion_mnist"}) == []
    )


def test_train_size_without_loading():
    assert train_size({"name": "fashion_mnist"}) == 60000
    assert train_size({"name": "fashion_mnist", "train_subset": 10005}) == 10000  # 1000 per class
    assert train_size({"name": "digits", "train_subset": 5000}) == 1347
    assert train_size({"name": "my_plugin"}) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_cell_without_cuda_is_one_line():
    with pytest.raises(AttnBenchError, match=r"training.device is 'cuda' but torch.cuda.is_available\(\) is False"):
        train_cell("resnet18", "none", {}, DS, dict(TINY3, device="cuda"), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_cuda_training_with_amp_and_channels_last(tmp_path, amp):
    training = dict(TINY3, device="cuda", amp=amp, channels_last=True)
    whole = train_cell("resnet18", "cbam", {}, DS, training, seed=0).stats
    assert whole["device"] == "cuda" and len(whole["curve"]) == 3 and whole["top1"] > 10
    ckpt = tmp_path / "cell.pt"
    with pytest.raises(Killed):
        train_cell("resnet18", "cbam", {}, DS, training, seed=0, checkpoint_path=ckpt, on_epoch=_kill_after(1))
    resumed = train_cell("resnet18", "cbam", {}, DS, training, seed=0, checkpoint_path=ckpt).stats
    assert resumed["resumed_from_epoch"] == 1 and resumed["steps"] == whole["steps"]
