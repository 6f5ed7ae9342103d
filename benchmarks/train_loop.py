"""Training throughput of attnbench's loop vs a plain PyTorch loop on the same model and data.

    python benchmarks/train_loop.py [--steps 30] [--repeats 5] [--module se] [--device cuda]

Both loops run the same number of SGD steps on the same in-memory batches, interleaved
(plain, attnbench, plain, ...) so machine drift hits both; prints images/s and the ratio
attnbench/plain (target >= 0.9). attnbench's figure includes its per-epoch test-split scoring
(kept tiny here) and, on CUDA, its loss check every 25 steps instead of every step.
"""

import argparse
import statistics
import time

import torch
from torch import nn

from attnbench.attach.backbone import adapt_stem, build
from attnbench.train.loop import TrainConfig, prepare, train_model


def make_model(module, in_chans, classes, seed=0):
    torch.manual_seed(seed)
    return adapt_stem(
        build("resnet18", module, backbone_kwargs={"num_classes": classes, "in_chans": in_chans}),
        kernel_size=3,
        stride=2,
        maxpool=False,
    )


def plain_loop(model, tx, ty, steps, batch, device="cpu"):
    model, tx, ty = model.to(device), tx.to(device), ty.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = tx[i * batch : (i + 1) * batch], ty[i * batch : (i + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--module", default="se")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both loops, float32)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tx, ty, vx, vy, classes = prepare({"name": a.dataset, "train_subset": a.steps * a.batch})
    data = (tx, ty, vx[: a.batch], vy[: a.batch], classes)  # tiny eval: we time the training steps
    cfg = TrainConfig(epochs=1, batch_size=a.batch, lr=0.05, threads=a.threads, device=a.device)
    plain, ours = [], []
    for r in range(a.repeats):
        plain.append(plain_loop(make_model(a.module, tx.shape[1], classes), tx, ty, a.steps, a.batch, a.device))
        ours.append(train_model(make_model(a.module, tx.shape[1], classes), data, cfg, seed=r)["train_images_per_s"])
    mp, mo = statistics.median(plain), statistics.median(ours)
    print(f"plain loop      : {mp:8.1f} img/s (median of {a.repeats}: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"attnbench loop  : {mo:8.1f} img/s (median of {a.repeats}: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"ratio attnbench/plain: {mo / mp:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
