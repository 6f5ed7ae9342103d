"""The second MAC counter, at PyTorch's dispatch level, and the training-step count built on it.

``MacCounterMode`` is torch's ``FlopCounterMode`` (no TorchScript, no fvcore) with every operator
sent through the shared table in ``macs_rules``: convolutions and matmuls by torch's own formulas
(FLOPs = 2 x MACs there, so halved), everything else by our rules. It sees the operators autograd
actually runs -- after decomposition (``x.mean`` and 1x1 ``adaptive_avg_pool2d`` both arrive as
``mean``), and backward ops too -- so it checks the traced counter and counts training. The same pass
counts every operator call and the bytes each moves (``traffic``: a stated model, not a cache simulation).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

from ..records.measurement import Measurement, macs_measurement
from .macs_rules import ELEMENTWISE, MATMUL, NORM, RuleError, Shape, apply, rule_of
from .traffic import op_traffic, resident_storages


def _value(v):
    if isinstance(v, torch.Tensor):
        return Shape(v.shape)
    if isinstance(v, (list, tuple)):
        return [_value(i) for i in v]
    return v


def _by_name(func, args, kwargs) -> Dict[str, object]:
    """Arguments keyed by their schema names, tensors reduced to shapes."""
    bound = dict(zip((a.name for a in func._schema.arguments), args), **kwargs)
    return {k: _value(v) for k, v in bound.items()}


class _Mode(_FlopCounterMode):
    """Counts an operator we have a rule for as it is; torch's mode would first try to decompose it
    (nearest upsampling into index arithmetic the trace never shows). Remembers the overload (torch
    passes only the packet on), whose schema names the arguments."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counter.current = func
        rule = rule_of(func._overloadpacket.__name__) if isinstance(func, torch._ops.OpOverload) else None
        if rule in (None, "free"):
            return super().__torch_dispatch__(func, types, args, kwargs)
        kwargs = kwargs or {}
        return self.counter._count_flops(func._overloadpacket, func(*args, **kwargs), args, kwargs)


class MacCounterMode(FlopCounterMode):
    """Counts MACs of everything run inside it; ``flop_counts`` holds MACs per module and operator."""

    def __init__(self, model: nn.Module = None):
        super().__init__(display=False)
        # A linear layer on a non-contiguous >2-D input runs as matmul + add(bias); the bias is folded
        # into the product (as addmm, fvcore's linear and convolutions have it), so that add is free.
        linears = [m for m in (model.modules() if model is not None else []) if isinstance(m, nn.Linear)]
        self.biases = {id(m.bias) for m in linears if m.bias is not None}
        self.categories: Counter = Counter()
        self.by_operator: Counter = Counter()
        self.unhandled: Counter = Counter()
        self.current = None
        # Memory traffic and operator calls, from the same pass (rules: ``traffic``): totals under keys
        # read / written / params / operators / no_traffic, and per module (tracker names) and per operator.
        self.resident = resident_storages(model)
        self.traffic: Counter = Counter()
        self.bytes_by_module: Counter = Counter()
        self.operators_by_module: Counter = Counter()
        self.bytes_by_operator: Counter = Counter()

    def __enter__(self):
        for c in (
            self.categories,
            self.by_operator,
            self.unhandled,
            self.traffic,
            self.bytes_by_module,
            self.operators_by_module,
            self.bytes_by_operator,
        ):
            c.clear()
        self.flop_counts.clear()
        self.mod_tracker.__enter__()
        self.mode = _Mode(self)
        self.mode.__enter__()
        return self

    @property
    def total(self) -> int:
        return sum(self.categories.values())

    def _product(self, packet, out, args, kwargs) -> Dict[str, int]:
        formula = self.flop_registry.get(packet)
        if formula is None:
            raise RuleError("torch has no formula")
        macs = {MATMUL: formula(*args, **kwargs, out_val=out) // 2}
        if packet is torch.ops.aten.convolution_backward and _by_name(self.current, args, kwargs)["output_mask"][2]:
            macs[ELEMENTWISE] = args[0].numel()  # the bias gradient: a reduction of grad_output, 1 per element
        return macs

    def _count_traffic(self, out, args, kwargs) -> None:
        """Every call that reaches here is one operator call (views and allocations included)."""
        t = op_traffic(self.current, args, kwargs, out, self.resident)
        self.traffic.update(
            {"read": t.read, "written": t.written, "params": t.params, "operators": 1, "no_traffic": int(t.total == 0)}
        )
        self.bytes_by_operator[self.current._overloadpacket.__name__] += t.total
        for parent in set(self.mod_tracker.parents):
            self.bytes_by_module[parent] += t.total
            self.operators_by_module[parent] += 1

    def _count_flops(self, func_packet, out, args, kwargs):
        name = func_packet.__name__
        rule = rule_of(name)
        if isinstance(self.current, torch._ops.OpOverload) and self.current._overloadpacket is func_packet:
            self._count_traffic(out, args, kwargs)
        try:
            if rule is None:
                raise RuleError("no rule")
            if name in ("add", "add_") and any(id(a) in self.biases for a in args):
                macs = {}
            elif rule == "product":
                macs = self._product(func_packet, out, args, kwargs)
            else:
                outs = [Shape(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
                macs = apply(name, _by_name(self.current, args, kwargs), outs)
        except RuleError:
            self.unhandled[f"aten.{name}"] += 1
            return out
        total = sum(macs.values())
        if total:
            self.categories.update(macs)
            self.by_operator[name] += total
            for parent in set(self.mod_tracker.parents):
                self.flop_counts[parent][func_packet] += total
        return out


@dataclass(frozen=True)
class MacCount:
    total: int
    conv_linear_matmul: int
    elementwise: int
    norm: int
    forward: int  # the part before backward() (training-mode forward and the loss)
    unhandled: Dict[str, int] = field(default_factory=dict)
    by_operator: Dict[str, int] = field(default_factory=dict)
    # memory traffic (bytes read + written, rules in ``traffic``) and operator calls, same pass
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_params: int = 0  # the part of bytes_read that is parameters and buffers
    operators: int = 0  # aten operator calls at the dispatch level (views and allocations included)
    operators_no_traffic: int = 0  # of which moved no data (views, bare allocations)
    bytes_by_operator: Dict[str, int] = field(default_factory=dict)
    bytes_by_module: Dict[str, int] = field(default_factory=dict)  # module tracker names ('ResNet.layer1.0.se')
    operators_by_module: Dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _mac_count(counter: MacCounterMode, forward: int) -> MacCount:
    c, t = counter.categories, counter.traffic
    return MacCount(
        total=int(counter.total),
        conv_linear_matmul=int(c[MATMUL]),
        elementwise=int(c[ELEMENTWISE]),
        norm=int(c[NORM]),
        forward=int(forward),
        unhandled=dict(counter.unhandled),
        by_operator={k: int(v) for k, v in sorted(counter.by_operator.items())},
        bytes_read=int(t["read"]),
        bytes_written=int(t["written"]),
        bytes_params=int(t["params"]),
        operators=int(t["operators"]),
        operators_no_traffic=int(t["no_traffic"]),
        bytes_by_operator={k: int(v) for k, v in sorted(counter.bytes_by_operator.items()) if v},
        bytes_by_module=dict(counter.bytes_by_module),
        operators_by_module=dict(counter.operators_by_module),
    )


def count_forward_macs(model: nn.Module, inputs) -> MacCount:
    """Eval-mode forward under ``no_grad``: what the traced counter counts, seen at dispatch level."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), MacCounterMode(model) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return _mac_count(counter, counter.total)


def count_train_macs(model: nn.Module, inputs) -> MacCount:
    """MACs of one training step: train-mode forward, cross-entropy loss (class 0 as target), backward.

    Not included: the optimizer step and zeroing gradients. Gradients flow to parameters only (the
    input does not require grad unless the caller's tensor does). Runs on a deep copy, so the model's
    BatchNorm statistics and ``.grad`` are untouched."""
    model = copy.deepcopy(model).train()
    with MacCounterMode(model) as counter:
        out = model(inputs)
        target = torch.zeros((out.shape[0], *out.shape[2:]), dtype=torch.long, device=out.device)
        loss = nn.functional.cross_entropy(out, target)
        forward = counter.total
        loss.backward()
    return _mac_count(counter, forward)


def measure_train_macs(model: nn.Module, inputs) -> Measurement:
    mc = count_train_macs(model, inputs)
    stats = {
        "conv_linear_matmul": mc.conv_linear_matmul,
        "elementwise": mc.elementwise,
        "norm": mc.norm,
        "forward": mc.forward,
        "backward": mc.total - mc.forward,
        "unhandled": mc.unhandled,
        "by_operator": mc.by_operator,
    }
    return macs_measurement(
        "macs_train",
        mc.total,
        inputs,
        stats,
        "torch FlopCounterMode (conv/matmul by torch's formulas / 2) + attnbench rules for the "
        "rest; train-mode forward + cross-entropy + backward to the parameters, no optimizer step",
    )
