"""``amp: auto`` / ``channels_last: auto``: training precision and memory format chosen on the host, from a measurement.

Whether bf16 autocast and channels_last speed training up depends on the CPU: on one with native bf16 (AVX-512 BF16,
AMX) bf16 + channels_last trained ResNet-18 1.32x faster than fp32 here; on one without (AVX2 only, most laptops
before 2023) bf16 autocast runs through conversion kernels and can be slower than fp32. So a suite may say ``auto``
and the run times a few training steps of each candidate on this host -- the suite's own backbone, data shape, batch,
stem and threads, the bare backbone (one choice for every module, so rows stay comparable), candidates interleaved
step by step -- and takes the fastest. A plainer candidate (fp32 before bf16, contiguous before channels_last) wins
whenever it is within ``MARGIN`` of the fastest: a speed-up is the only reason to leave fp32, and the margin keeps a
rerun on the same host from flipping on noise.

The choice is resolved before cells get their keys, so a key holds what really ran (``amp: bf16`` or ``null``), a
store resumes on a host that chooses alike, and each record keeps the probe (``stats.recipe_choice``): the step times,
the rule, and whether the CPU has native bf16. The accuracy-speedups suite measured that bf16 + channels_last does
not change top-1 on the shipped recipe (-0.10 pp [-0.46, +0.25]).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

AUTO = "auto"
AUTO_KEYS = ("amp", "channels_last")
MARGIN = 0.10  # a plainer setting within 10% of the fastest is taken
WARMUP_STEPS = 2  # per candidate, untimed (first-call allocation, oneDNN primitive creation)
ROUNDS = 5  # timed steps per candidate, one per round, in rotating order
DROP = 3.0  # a candidate this many times slower than the fastest after warm-up is not timed further
# What makes a training step faster or slower (not epochs, lr, seeds: they do not change a step's cost).
SPEED_KEYS = ("batch_size", "optimizer", "stem", "threads", "device", "compile", "amp", "channels_last")


def has_auto(training: Dict[str, Any]) -> bool:
    return any(training.get(k) == AUTO for k in AUTO_KEYS)


def candidates(training: Dict[str, Any]) -> List[Tuple[Optional[str], bool]]:
    """(amp, channels_last) pairs to time, plainest first: ``auto`` expands to both choices, a fixed value stays."""
    amps = [None, "bf16"] if training.get("amp") == AUTO else [training.get("amp")]
    lasts = [False, True] if training.get("channels_last") == AUTO else [bool(training.get("channels_last", False))]
    return [(a, c) for a in amps for c in lasts]


def label(amp: Optional[str], channels_last: bool) -> str:
    return (amp or "fp32") + (" + channels_last" if channels_last else "")


def native_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware as oneDNN sees it (AVX-512 BF16 or AMX); False where unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_cells(cells: Sequence, probe=None) -> List:
    """Accuracy cells with ``auto`` settings, resolved: one probe per backbone and speed-relevant recipe, shared by
    every module and seed; each cell gets the concrete training settings and the probe as ``recipe_choice``."""
    probe = probe or probe_recipe
    done: Dict[str, Dict[str, Any]] = {}
    out = []
    for cell in cells:
        if cell.metric != "accuracy" or not has_auto(cell.training):
            out.append(cell)
            continue
        speed = {k: cell.training.get(k) for k in SPEED_KEYS}
        key = json.dumps(
            [cell.backbone, cell.dataset.get("name"), cell.dataset.get("root"), speed], sort_keys=True, default=str
        )
        if key not in done:
            done[key] = probe(cell.backbone, cell.dataset, cell.training)
        choice = done[key]
        training = {**cell.training, "amp": choice["amp"], "channels_last": choice["channels_last"]}
        out.append(replace(cell, training=training, recipe_choice=choice))
    return out


def probe_recipe(backbone: str, dataset: Dict[str, Any], training: Dict[str, Any]) -> Dict[str, Any]:
    """Time ``ROUNDS`` training steps of each candidate on this host and choose (see the module docstring)."""
    from ..attach.backbone import adapt_stem, build
    from ..guard.threads import fixed_threads
    from .loop import TrainConfig, autocast, make_optimizer, prepare

    cands = candidates(training)
    base = {k: v for k, v in training.items() if k not in AUTO_KEYS}
    cfg = TrainConfig(**base)
    device = torch.device(cfg.device)
    with fixed_threads(cfg.threads):
        tx, ty, _, _, num_classes = prepare(dataset)
        n = min(len(tx), cfg.batch_size)
        x, y = tx[:n].to(device), ty[:n].to(device)
        torch.manual_seed(0)
        model = build(
            backbone, "none", init="train", backbone_kwargs={"num_classes": num_classes, "in_chans": x.shape[1]}
        )
        if cfg.stem:
            adapt_stem(model, **cfg.stem)
        steps = {}
        for amp, last in cands:
            fmt = torch.channels_last if last else torch.contiguous_format
            m = copy.deepcopy(model).to(device=device, memory_format=fmt).train()
            c = replace(cfg, amp=amp, channels_last=last)
            steps[(amp, last)] = _Step(m, make_optimizer(m, c), x.contiguous(memory_format=fmt), y, c, autocast)
        times: Dict[Tuple[Optional[str], bool], List[float]] = {k: [] for k in steps}
        warm: Dict[Tuple[Optional[str], bool], float] = {}
        for _ in range(WARMUP_STEPS):
            for k, step in steps.items():
                warm[k] = step()
        # A candidate whose last warm-up step took over DROP x the fastest one's cannot come within MARGIN: it is
        # not timed further (on a CPU without native bf16, bf16 steps ran 12-25x slower, and five more of each
        # would have cost minutes); its warm-up step stands for it.
        fastest = min(warm.values())
        order = [k for k in steps if warm[k] <= DROP * fastest]
        for r in range(ROUNDS):
            for k in order[r % len(order) :] + order[: r % len(order)]:
                times[k].append(steps[k]())
    median = {k: statistics.median(v) if v else warm[k] for k, v in times.items()}
    dropped = [k for k in cands if not times[k]]
    chosen = choose(cands, median)
    ref = median[cands[0]]
    speeds = ", ".join(f"{label(*k)} {ref / median[k]:.2f}x" for k in cands)
    why = (
        f"{label(*chosen)} chosen by auto: speed vs {label(*cands[0])} {speeds} (median of {ROUNDS} interleaved "
        f"training steps each, batch {n}, on this host; native bf16: {'yes' if native_bf16() else 'no'}; the "
        f"plainest setting within {MARGIN:.0%} of the fastest wins"
        + (
            f"; {', '.join(label(*k) for k in dropped)}: warm-up step only, over {DROP:g}x the fastest"
            if dropped
            else ""
        )
        + ")"
    )
    return {
        "amp": chosen[0],
        "channels_last": chosen[1],
        "asked": {k: training.get(k) for k in AUTO_KEYS},
        "step_ms": {label(*k): round(v * 1e3, 2) for k, v in median.items()},
        "speedup": round(ref / median[chosen], 3),
        "margin": MARGIN,
        "rounds": ROUNDS,
        "dropped": [label(*k) for k in dropped],
        "batch": n,
        "native_bf16": native_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "why": why,
    }


def choose(cands: Sequence[Tuple[Optional[str], bool]], step_s: Dict[Tuple[Optional[str], bool], float]):
    """The plainest candidate (``cands`` is plainest first) whose step time is within ``MARGIN`` of the fastest."""
    fastest = min(step_s[k] for k in cands)
    return next(k for k in cands if step_s[k] <= fastest * (1 + MARGIN))


class _Step:
    """One training step (forward, loss, backward, optimizer step) of one candidate; returns its seconds."""

    def __init__(self, model: nn.Module, opt, x, y, cfg, autocast):
        self.model, self.opt, self.x, self.y, self.cfg, self.autocast = model, opt, x, y, cfg, autocast
        self.cuda = x.device.type == "cuda"

    def __call__(self) -> float:
        t0 = time.perf_counter()
        with self.autocast(self.cfg):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.cuda:
            torch.cuda.synchronize(self.x.device)
        return time.perf_counter() - t0
