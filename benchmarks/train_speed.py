"""Images/s of attnbench's training step under each speed-up, against a plain fp32 PyTorch loop.

    python benchmarks/train_speed.py [--module none] [--steps 30] [--rounds 3] [--threads 2]
        [--variants plain,fp32,cl,bf16,bf16-cl,compile,bf16-cl-compile] [--batch 128] [--json FILE]

Every variant trains ResNet-18 with the accuracy suites' small-input stem on the same in-memory
Fashion-MNIST batches (digits with --dataset digits). ``plain`` is a plain PyTorch loop (fp32,
contiguous, eager, SGD with Nesterov momentum; the reference); every other variant is attnbench's own
loop (``train.train_model``, the one the suites run) with the settings below. A variant suffixed
``@256`` uses that batch size. In each round every variant runs one warm-up epoch of ``steps`` steps
(torch.compile compiles there: ``first step s`` is that step, compilation included) and one timed
epoch of ``steps`` steps, variants interleaved round by round so machine drift hits all of them;
the medians over rounds are printed. ``eval img/s`` is the per-epoch test scoring (forward only,
``eval_images`` test images) under the same settings.

Speed is only half of a speed-up: suites/accuracy-speedups.yaml trains the accuracy recipe under each
setting with 3 seeds and its table gives every top-1 against fp32 with a 95% interval (docs/accuracy.md).
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

from attnbench.attach.backbone import adapt_stem, build
from attnbench.train.loop import TrainConfig, prepare, train_model

VARIANTS = {  # name -> TrainConfig overrides (plain: not attnbench's loop at all)
    "plain": None,
    "fp32": {},
    "cl": {"channels_last": True},
    "bf16": {"amp": "bf16"},
    "bf16-cl": {"amp": "bf16", "channels_last": True},
    "compile": {"compile": True},
    "cl-compile": {"channels_last": True, "compile": True},
    "bf16-compile": {"amp": "bf16", "compile": True},
    "bf16-cl-compile": {"amp": "bf16", "channels_last": True, "compile": True},
}


def parse_variant(spec, batch):
    name, _, b = spec.partition("@")
    if name not in VARIANTS:
        raise SystemExit(
            f"unknown variant {name!r}; known: {', '.join(VARIANTS)} (suffix @BATCH for another batch size)"
        )
    return name, VARIANTS[name], int(b) if b else batch


def make_model(module, in_chans, classes, stem, seed=0):
    torch.manual_seed(seed)
    model = build("resnet18", module, init="train", backbone_kwargs={"num_classes": classes, "in_chans": in_chans})
    return adapt_stem(model, **stem)


def plain_loop(model, tx, ty, steps, batch, seed):
    """A plain fp32 PyTorch loop on the same batches: (timed img/s, first step s)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(2):  # warm-up epoch, timed epoch
        perm = torch.randperm(len(tx), generator=gen)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            if i == 1 and not times:
                first = time.perf_counter() - t0
            loss = loss_fn(model(tx[idx]), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()  # attnbench's loop checks every CPU loss for NaN/inf: the same sync here
        times.append(time.perf_counter() - t0)
    return steps * batch / times[1], first


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--module", default="none")
    p.add_argument("--steps", type=int, default=30, help="steps per epoch (warm-up and timed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--maxpool", action="store_true")
    p.add_argument("--variants", default="plain,fp32,cl,bf16,bf16-cl,compile,bf16-cl-compile")
    p.add_argument("--json", help="write the raw numbers here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    variants = [parse_variant(v, a.batch) for v in a.variants.split(",")]
    stem = {"kernel_size": 3, "stride": a.stem_stride, "maxpool": a.maxpool}
    biggest = max(b for _, _, b in variants)
    tx, ty, vx, vy, classes = prepare({"name": a.dataset, "train_subset": a.steps * biggest})
    results = {f"{n}@{b}": {"img_s": [], "first_step_s": [], "eval_img_s": []} for n, _, b in variants}
    for r in range(a.rounds):
        for name, overrides, batch in variants:
            key = f"{name}@{batch}"
            model = make_model(a.module, tx.shape[1], classes, stem, seed=r)
            n = a.steps * batch
            if overrides is None:
                rate, first = plain_loop(model, tx[:n], ty[:n], a.steps, batch, seed=r)
                results[key]["img_s"].append(rate)
                results[key]["first_step_s"].append(first)
                continue
            cfg = TrainConfig(
                epochs=2,
                batch_size=batch,
                lr=0.05,
                warmup_steps=0,
                stem=stem,
                threads=a.threads,
                eval_batch_size=1000,
                **overrides,
            )
            data = (tx[:n], ty[:n], vx[: a.eval_images], vy[: a.eval_images], classes)
            stats = train_model(model, data, cfg, seed=r)
            timed = stats["curve"][1]
            results[key]["img_s"].append(n / timed["s"])
            results[key]["first_step_s"].append(stats["first_step_s"])
            results[key]["eval_img_s"].append(a.eval_images / timed["eval_s"])
            print(f"round {r + 1}/{a.rounds} {key:>20}: {n / timed['s']:7.1f} img/s", flush=True)
    plain = statistics.median(results[f"plain@{a.batch}"]["img_s"]) if f"plain@{a.batch}" in results else None
    print(
        f"\nresnet18 + {a.module}, stem {stem}, {a.dataset} {tuple(tx.shape[2:])}, {a.threads} threads, "
        f"{a.steps} steps per epoch, median of {a.rounds} rounds ({torch.__version__}, "
        f"{torch.backends.cpu.get_cpu_capability()})"
    )
    print(
        "| variant | batch | train img/s | x plain fp32 | first step s | eval img/s |\n|---|---:|---:|---:|---:|---:|"
    )
    for name, _, batch in variants:
        res = results[f"{name}@{batch}"]
        rate = statistics.median(res["img_s"])
        ev = f"{statistics.median(res['eval_img_s']):.0f}" if res["eval_img_s"] else "—"
        ratio = f"{rate / plain:.2f}" if plain else "—"
        print(f"| {name} | {batch} | {rate:.1f} | {ratio} | {statistics.median(res['first_step_s']):.1f} | {ev} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
