"""Short, seeded, deterministic training on small in-memory datasets: what a module buys.

Data stay as tensors (no DataLoader workers at these sizes); each epoch is a seeded
permutation; SGD (Nesterov) or AdamW with per-step cosine decay; the loss is checked every
step and a NaN/inf stops the cell with a NonFiniteLoss failure. The loop is measured against
a plain PyTorch loop in benchmarks/bench_train_loop.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, Optional

import torch
from torch import nn

from .attach import adapt_stem, build
from .data import Splits, load_dataset
from .errors import AttnBenchError, NonFiniteLoss
from .measures.params import count_params
from .measures.record import Measurement
from .registry import is_baseline

TRAINING_KEYS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "warmup_steps",
                 "stem", "channels_last", "threads", "eval_batch_size", "label_smoothing")
DATASET_KEYS = ("name", "root", "train_subset", "test_subset", "download")


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
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise AttnBenchError(f"training.optimizer {cfg.optimizer!r} is not 'sgd' or 'adamw'")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, mem_format) -> Dict[str, float]:
    model.eval()
    top1 = top5 = 0
    k = min(5, model.num_classes if hasattr(model, "num_classes") else 5)
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch].contiguous(memory_format=mem_format))
        target = y[i:i + batch]
        top = logits.topk(k, dim=1).indices
        top1 += (top[:, 0] == target).sum().item()
        top5 += (top == target[:, None]).any(dim=1).sum().item()
    return {"top1": 100.0 * top1 / len(x), "top5": 100.0 * top5 / len(x)}


def train_model(model: nn.Module, data, cfg: TrainConfig, seed: int) -> Dict[str, float]:
    """Train ``model`` in place; returns top-1/top-5, final loss, throughput. Raises NonFiniteLoss."""
    tx, ty, vx, vy, num_classes = data
    mem_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=mem_format).train()
    opt = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(tx) // cfg.batch_size  # drop the ragged last batch: BN needs > 1 sample
    total = steps_per_epoch * cfg.epochs
    step, seen, train_time, last_losses = 0, 0, 0.0, []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(tx), generator=gen)
        last_losses = []
        t0 = time.perf_counter()
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            loss = loss_fn(model(tx[idx].contiguous(memory_format=mem_format)), ty[idx])
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss became {value} at epoch {epoch + 1}, step {b + 1} (lr {opt.param_groups[0]['lr']:g}); "
                                    "lower training.lr or add warmup_steps")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last_losses.append(value)
            step += 1
            seen += len(idx)
        train_time += time.perf_counter() - t0
    result = evaluate(model, vx, vy, cfg.eval_batch_size, mem_format)
    if num_classes <= 5:
        result.pop("top5")
    result.update({
        "final_train_loss": sum(last_losses) / max(1, len(last_losses)), "train_images_per_s": seen / train_time if train_time else 0.0,
        "train_s": train_time, "steps": step, "train_size": len(tx), "test_size": len(vx),
    })
    return result


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of every parameter and buffer: two runs are bit-for-bit equal iff these match."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def train_cell(backbone: str, module: str, options: Dict, dataset: Dict, training: Dict, seed: int) -> Measurement:
    cfg = TrainConfig(**training)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        t0 = time.perf_counter()
        data = prepare(dataset)
        in_chans, num_classes = data[0].shape[1], data[4]
        torch.manual_seed(seed)
        model = build(backbone, None if is_baseline(module) else module,
                      backbone_kwargs={"num_classes": num_classes, "in_chans": in_chans}, **options)
        if cfg.stem:
            adapt_stem(model, **cfg.stem)
        stats = train_model(model, data, cfg, seed)
        stats.update({"params": count_params(model), "seed": seed, "wall_s": time.perf_counter() - t0,
                      "threads": torch.get_num_threads(), "weights_sha1": weights_digest(model)})
        return Measurement("accuracy", stats["top1"], "% top-1", "train from scratch, evaluate on the test split",
                           {"dataset": dataset, "training": training, "seed": seed}, stats)
    finally:
        torch.set_num_threads(old_threads)
