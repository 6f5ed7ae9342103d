"""Seeded, deterministic training on in-memory datasets: what a module buys, epoch by epoch.

Data stay as tensors (no DataLoader workers at these sizes), moved to the training device once
per cell; each epoch is a seeded permutation drawn on the CPU (the same order on every device);
SGD (Nesterov) or AdamW with per-step cosine decay. After every epoch the test split is scored,
so each record carries its learning curve, and (with a checkpoint path) the whole training state
is saved, so a kill loses at most one epoch and a rerun continues bit-for-bit. A NaN/inf loss
stops the cell with NonFiniteLoss. Throughput vs a plain loop: benchmarks/train_loop.py.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..attach.backbone import adapt_stem, build
from ..core.files import write_atomic
from ..core.settings import is_finite_number, short
from ..errors import ControlFlow, NonFiniteLoss, UsageError
from ..guard.cell import as_unsupported
from ..guard.threads import fixed_threads
from ..measures.params import count_params
from ..records.measurement import Measurement
from .data import Splits, load_dataset, train_size

DATASET_KEYS = ("name", "root", "train_subset", "test_subset", "download")


class TrainingPaused(ControlFlow):
    """Training stopped at an epoch end on request, its state saved in the checkpoint: not an error of the
    cell (errors.ControlFlow, so a cell's error boundary lets it through to the executor that asked)."""

    def __init__(self, epoch: int, start: int = 0):
        super().__init__(f"paused after epoch {epoch} (this stretch started from epoch {start})")
        self.epoch, self.start = epoch, start


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"  # or adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    stem: Optional[Dict[str, Any]] = field(default_factory=lambda: {"kernel_size": 3, "stride": 1, "maxpool": False})
    channels_last: bool = False
    threads: Optional[int] = None
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    device: str = "cpu"  # or cuda, cuda:N
    amp: Optional[str] = (
        None  # None, bf16 or fp16 (fp16 on CUDA only, with a gradient scaler); suites: also auto (host_recipe)
    )
    compile: bool = False  # torch.compile (inductor, static shapes) the model's training and scoring calls
    checkpoint: bool = True  # save the training state after every epoch when the runner gives a path


TRAINING_KEYS = tuple(f.name for f in fields(TrainConfig))


def validate_training(training: Dict[str, Any], dataset: Optional[Dict[str, Any]] = None) -> List[Tuple[str, str]]:
    """(field, problem) for every bad training setting; empty when the suite can train.

    Checked at load time so a bad suite fails in a second with one line, not after an hour."""
    t, problems = {**asdict(TrainConfig()), **training}, []
    for key in training:
        if key not in TRAINING_KEYS:
            problems.append((key, f"unknown setting; known: {', '.join(TRAINING_KEYS)}"))
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not (isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] > 0):
            problems.append((key, f"must be a positive integer, got {short(t[key])}"))
    if t["optimizer"] not in ("sgd", "adamw"):
        problems.append(("optimizer", f"must be 'sgd' or 'adamw', got {short(t['optimizer'])}"))
    if not (is_finite_number(t["lr"]) and t["lr"] > 0):
        problems.append(("lr", f"must be a finite number > 0, got {short(t['lr'])}"))
    for key in ("weight_decay", "warmup_steps", "label_smoothing"):
        if not (is_finite_number(t[key]) and t[key] >= 0):
            problems.append((key, f"must be a finite number >= 0, got {short(t[key])}"))
    for key in ("channels_last", "compile", "checkpoint"):
        if not isinstance(t[key], bool) and not (key == "channels_last" and t[key] == "auto"):
            problems.append(
                (key, f"must be true or false{' or auto' if key == 'channels_last' else ''}, got {short(t[key])}")
            )
    if not (is_finite_number(t["momentum"]) and 0 <= t["momentum"] < 1):
        problems.append(("momentum", f"must be in [0, 1), got {short(t['momentum'])}"))
    device = t["device"]
    if not (
        isinstance(device, str) and (device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()))
    ):
        problems.append(("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {short(device)}"))
    if t["amp"] not in (None, "auto", *AMP_DTYPES):
        problems.append(
            (
                "amp",
                f"must be null, 'bf16', 'fp16' or 'auto' (fp32 or bf16, whichever trains faster on this "
                f"host), got {short(t['amp'])}",
            )
        )
    elif t["amp"] == "fp16" and device == "cpu":
        problems.append(("amp", "fp16 autocast needs a CUDA device; use bf16 on the CPU"))
    n = train_size(dataset) if dataset else None
    if n is not None and isinstance(t["batch_size"], int) and t["batch_size"] > n:
        problems.append(
            (
                "batch_size",
                f"{t['batch_size']} exceeds the {n} training images of {dataset['name']} "
                "(0 steps per epoch); lower training.batch_size or raise dataset.train_subset",
            )
        )
    return problems


@lru_cache(maxsize=4)
def _cached_dataset(name: str, root: Optional[str], download: bool) -> Splits:
    return load_dataset(name, root, download)


def stratified_subset(y: torch.Tensor, n: Optional[int], num_classes: int, seed: int = 12345) -> torch.Tensor:
    """Indices of ``n`` samples, the same share of each class, the same for every training seed."""
    if not n or n >= len(y):
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    per_class = n // num_classes
    picked = [perm[y[perm] == c][:per_class] for c in range(num_classes)]
    return torch.sort(torch.cat(picked)).values


def prepare(dataset: Dict[str, Any]):
    """(train_x, train_y, test_x, test_y, num_classes) as normalised float tensors."""
    splits = _cached_dataset(dataset["name"], dataset.get("root"), bool(dataset.get("download", False)))
    tr = stratified_subset(splits.train_y, dataset.get("train_subset"), splits.num_classes)
    te = stratified_subset(splits.test_y, dataset.get("test_subset"), splits.num_classes)
    tx = splits.train_x[tr].float().div_(255)
    mean = tx.mean(dim=(0, 2, 3), keepdim=True)
    std = tx.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    tx = (tx - mean) / std
    vx = (splits.test_x[te].float().div_(255) - mean) / std
    return tx, splits.train_y[tr], vx, splits.test_y[te], splits.num_classes


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"training.optimizer {cfg.optimizer!r} is not 'sgd' or 'adamw'")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def autocast(cfg: TrainConfig):
    """bf16/fp16 autocast on the training device, or a no-op context (the CPU default: float32)."""
    device_type = torch.device(cfg.device).type
    return (
        torch.autocast(device_type, dtype=AMP_DTYPES[cfg.amp], enabled=True)
        if cfg.amp
        else torch.autocast(device_type, enabled=False)
    )


def training_forward(model: nn.Module, cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call training and scoring go through: the model itself, or with ``compile`` its torch.compile
    (runtimes.compile_model: inductor, default mode, static shapes, a dynamo budget of its own). The
    parameters stay the model's, so checkpoints and the weights' SHA-1 do not change with it."""
    if not cfg.compile:
        return model
    from ..measures.runtimes import check_available, compile_model

    check_available("compile", cfg.device)  # a missing C++ compiler / triton: one line, before any epoch
    return compile_model(model)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    mem_format,
    cfg: Optional[TrainConfig] = None,
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, float]:
    """Top-1, top-5 and mean cross-entropy (without label smoothing) on (x, y) through ``forward`` (default:
    the model); leaves the model in eval mode."""
    model.eval()
    forward = forward or model
    top1 = top5 = 0
    loss = 0.0
    k = min(5, model.num_classes if hasattr(model, "num_classes") else 5)
    for i in range(0, len(x), batch):
        with autocast(cfg or TrainConfig()):
            logits = forward(x[i : i + batch].contiguous(memory_format=mem_format)).float()
        target = y[i : i + batch]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        top1 += (top[:, 0] == target).sum().item()
        top5 += (top == target[:, None]).any(dim=1).sum().item()
    return {"top1": 100.0 * top1 / len(x), "top5": 100.0 * top5 / len(x), "loss": loss / len(x)}


def _check_finite(pending: List[torch.Tensor], epoch: int, first_step: int, lr: float) -> List[float]:
    """The pending losses as floats (one device sync); NonFiniteLoss names the first bad step."""
    values = torch.stack(pending).tolist() if len(pending) > 1 else [pending[0].item()]
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"loss became {value} at epoch {epoch + 1}, step {first_step + i + 1} (lr {lr:g}); "
                "lower training.lr or add warmup_steps"
            )
    return values


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write-then-rename, so a kill during the save leaves the previous epoch's checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Optional[Path], fingerprint: str) -> Optional[Dict[str, Any]]:
    """The saved state of this very cell, or None; an unreadable checkpoint, or one of other settings, is discarded."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):  # truncated by a full disk: start over
        state = {}
    if state.get("fingerprint") != fingerprint:
        Path(path).unlink()
        return None
    return state


def _data_on(data, device: torch.device, mem_format):
    tx, ty, vx, vy, num_classes = data
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return (
        move(tx).contiguous(memory_format=mem_format),
        move(ty),
        move(vx).contiguous(memory_format=mem_format),
        move(vy),
        num_classes,
    )


def train_model(
    model: nn.Module,
    data,
    cfg: TrainConfig,
    seed: int,
    checkpoint_path: Optional[Path] = None,
    fingerprint: str = "",
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    pause_after_s: Optional[float] = None,
) -> Dict[str, Any]:
    """Train ``model`` in place, scoring the test split after every epoch; returns the final scores,
    the curve, loss and throughput. Resumes from ``checkpoint_path`` when it holds this cell's state.
    ``on_epoch(point)`` runs after each epoch's checkpoint is saved. With ``pause_after_s`` (and a
    checkpoint path) it raises TrainingPaused at the first epoch end after that many seconds, the state
    saved: an executor ships the checkpoint and continues elsewhere. Raises NonFiniteLoss."""
    device = torch.device(cfg.device)
    mem_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=mem_format).train()
    tx, ty, vx, vy, num_classes = _data_on(data, device, mem_format)
    forward = training_forward(model, cfg)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(tx) // cfg.batch_size  # drop the ragged last batch: BN needs > 1 sample
    if steps_per_epoch == 0:
        raise UsageError(
            f"training.batch_size {cfg.batch_size} exceeds the {len(tx)} training images: 0 steps per "
            "epoch; lower training.batch_size or raise dataset.train_subset"
        )
    total = steps_per_epoch * cfg.epochs
    check_every = 1 if device.type == "cpu" else 25  # a CUDA sync per step would stall the GPU's queue
    start, step, seen, train_time, curve, top5, wall_before, w0 = 0, 0, 0, 0.0, [], None, 0.0, time.perf_counter()
    first_step_s = None  # this process' first step: includes torch.compile's compilation when compile is on
    saved = load_checkpoint(checkpoint_path, fingerprint)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        gen.set_state(saved["generator"])
        _set_rng_state(saved["rng"], device)
        start, step, seen, train_time, curve = (
            saved["epoch"],
            saved["step"],
            saved["seen"],
            saved["train_s"],
            saved["curve"],
        )
        wall_before = saved["wall_s"]
    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(len(tx), generator=gen).to(device)
        losses, pending = [], []
        t0 = time.perf_counter()
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            lr = lr_at(step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            ts = time.perf_counter() if first_step_s is None else None
            with autocast(cfg):
                loss = loss_fn(forward(tx[idx].contiguous(memory_format=mem_format)), ty[idx])
            pending.append(loss.detach().float())
            if len(pending) == check_every or b == steps_per_epoch - 1:
                losses += _check_finite(pending, epoch, b + 1 - len(pending), lr)
                pending = []
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ts is not None:
                first_step_s = time.perf_counter() - ts
            step += 1
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_s = time.perf_counter() - t0
        train_time += epoch_s
        t1 = time.perf_counter()
        scores = evaluate(model, vx, vy, cfg.eval_batch_size, mem_format, cfg, forward)
        top5 = scores["top5"]
        curve.append(
            {
                "epoch": epoch + 1,
                "images_seen": seen,
                "test_top1": scores["top1"],
                "test_loss": scores["loss"],
                "train_loss": sum(losses) / len(losses),
                "lr": lr,
                "s": epoch_s,
                "eval_s": time.perf_counter() - t1,
            }
        )
        if checkpoint_path is not None and cfg.checkpoint and epoch + 1 < cfg.epochs:
            save_checkpoint(
                Path(checkpoint_path),
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "step": step,
                    "seen": seen,
                    "train_s": train_time,
                    "wall_s": wall_before + time.perf_counter() - w0,
                    "curve": curve,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": gen.get_state(),
                    "rng": _rng_state(device),
                },
            )
        if on_epoch is not None:
            on_epoch(curve[-1])
        if (
            pause_after_s is not None
            and checkpoint_path is not None
            and cfg.checkpoint
            and epoch + 1 < cfg.epochs
            and time.perf_counter() - w0 >= pause_after_s
        ):
            raise TrainingPaused(epoch + 1, start)
    last = curve[-1]
    result = {"top1": last["test_top1"], "top5": top5, "test_loss": last["test_loss"]}
    if num_classes <= 5 or top5 is None:
        result.pop("top5")
    result.update(
        {
            "final_train_loss": last["train_loss"],
            "train_images_per_s": seen / train_time if train_time else 0.0,
            "train_s": train_time,
            "steps": step,
            "train_size": len(tx),
            "test_size": len(vx),
            "curve": curve,
            "resumed_from_epoch": start,
            "wall_before": wall_before,
            "first_step_s": first_step_s,
        }
    )
    return result


def kernel_environment(cfg: TrainConfig) -> Dict[str, Any]:
    """What picks the kernels a bit-for-bit rerun must meet again, beyond torch's version and the thread
    count: the CPU's instruction set as torch dispatches on it (bf16 and fp32 kernels differ between
    AVX2, AVX-512 and AMX), the oneDNN build and, for a compiled CPU step, the C++ compiler inductor used."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": _onednn_version(),
        "compiler": _cxx_version() if cfg.compile and cfg.device == "cpu" else None,
    }


@lru_cache(maxsize=1)
def _onednn_version() -> Optional[str]:
    import re

    found = re.search(r"MKL-DNN (v[\w.]+)", torch.__config__.show())
    return found.group(1) if found else None


@lru_cache(maxsize=1)
def _cxx_version() -> Optional[str]:
    """The C++ compiler inductor would build CPU kernels with (``compile: true``), first line of --version."""
    import shutil
    import subprocess

    from ..measures.runtimes import _cpp_compiler

    cxx = _cpp_compiler()
    if not cxx or not shutil.which(cxx):
        return None
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of every parameter and buffer: two runs are bit-for-bit equal iff these match."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def deterministic_cuda(device: str):
    """cuDNN's deterministic kernels, no autotuning, while a CUDA cell trains; restored afterwards.

    Not covered (PyTorch has no deterministic kernel or we do not force one): atomics in some
    backward passes (e.g. adaptive pooling, index_add), and AMP rounding, so CUDA runs agree run
    to run on one GPU in practice but are not promised bit-for-bit, and never equal the CPU's."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def train_cell(
    backbone: str,
    module: str,
    options: Dict,
    dataset: Dict,
    training: Dict,
    seed: int,
    checkpoint_path: Optional[Path] = None,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    pause_after_s: Optional[float] = None,
    recipe_choice: Optional[Dict[str, Any]] = None,
) -> Measurement:
    """Train one (backbone, module, seed) cell; with ``checkpoint_path`` it saves every epoch there,
    resumes from it when present, and deletes it once the cell has finished (``pause_after_s``: see
    train_model; the checkpoint then stays for whoever continues). ``recipe_choice``: how ``auto`` settings
    were resolved (attnbench.train.recipe), kept in the record."""
    problems = validate_training(training)
    if problems:
        raise UsageError(f"training.{problems[0][0]}: {problems[0][1]}")
    device = training.get("device", "cpu")
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError(
            f"training.device is {device!r} but torch.cuda.is_available() is False here; "
            "run on a GPU machine or set training.device: cpu"
        )
    auto = [k for k in ("amp", "channels_last") if training.get(k) == "auto"]
    if auto:  # the runner resolves `auto` on the host before cells get their keys (attnbench.train.recipe)
        raise UsageError(
            f"training.{auto[0]} is 'auto': resolve it first (attnbench.train.recipe.resolve_cells, as "
            "run_suite does) or give a concrete value"
        )
    cfg = TrainConfig(**training)
    where = ("root", "download")  # where the data lie is not what they are: a checkpoint survives a moved data folder
    fingerprint = json.dumps(
        [backbone, module, options, {k: v for k, v in dataset.items() if k not in where}, training, seed],
        sort_keys=True,
        default=str,
    )
    with fixed_threads(cfg.threads):
        t0 = time.perf_counter()
        data = prepare(dataset)
        in_chans, num_classes = data[0].shape[1], data[4]
        torch.manual_seed(seed)
        model = build(
            backbone,
            module,
            init="train",  # training keeps the training init (zero_init_last ...)
            backbone_kwargs={"num_classes": num_classes, "in_chans": in_chans},
            **options,
        )
        if cfg.stem:
            adapt_stem(model, **cfg.stem)
        with deterministic_cuda(cfg.device):
            try:
                stats = train_model(model, data, cfg, seed, checkpoint_path, fingerprint, on_epoch, pause_after_s)
            except (
                Exception
            ) as exc:  # batch 1 reaching a 1x1 map is a known limit (unsupported), not the module's failure
                known = as_unsupported(exc, cfg.batch_size, tuple(data[0].shape[2:]))
                if known is exc:
                    raise
                raise known from None
        wall = time.perf_counter() - t0 + stats.pop("wall_before", 0.0)
        stats.update(
            {
                "params": count_params(model),
                "seed": seed,
                "wall_s": wall,
                "init": "train",
                "threads": torch.get_num_threads(),
                "weights_sha1": weights_digest(model),
                "device": cfg.device,
                "amp": cfg.amp,
                "recipe": asdict(cfg),
                **kernel_environment(cfg),
            }
        )
        if recipe_choice:
            stats["recipe_choice"] = recipe_choice
        if checkpoint_path is not None and Path(checkpoint_path).exists():
            Path(checkpoint_path).unlink()
        return Measurement(
            "accuracy",
            stats["top1"],
            "% top-1",
            "train from scratch, evaluate on the test split",
            {"dataset": dataset, "training": training, "seed": seed},
            stats,
        )
