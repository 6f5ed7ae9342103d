"""Multiply-adds (MACs; one multiply-add = 1, the SE/CBAM/ECA papers' "FLOPs"), counted twice.

Every operator is counted by the rules in ``macs_rules.RULES`` (stated there: 1 per output element
for element-wise ops, 1 per input element for reductions, output x window for pools, and one rule
for normalisation layers: 1 per element for normalise + affine, +1 per element for each statistic
computed at run time -- LayerNorm/GroupNorm/InstanceNorm/train-mode BatchNorm 3, eval BatchNorm 1)
or listed as unhandled; none is a silent zero.

Counter 1 walks fvcore's TorchScript trace (fvcore's own ignore list is emptied, so comparisons,
masked_fill, gather ... reach our rules); conv/linear/matmul use fvcore's own handles. Counter 2 is
``macs_dispatch.MacCounterMode`` (torch's FlopCounterMode). Both totals are recorded; a difference
is named per operator. ``fvcore`` keeps fvcore's own unmodified total for reference: it moves with
coding style (fvcore counts ``nn.AdaptiveAvgPool2d`` but not ``x.mean``, and its own norm rules),
while ``conv_linear_matmul`` does not.

The dispatch-level pass also counts memory traffic (bytes read + written per operator, ``traffic``) and
operator calls, whole network and per attached module; ``measure_flops`` stores them in the same record.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List

import torch
from torch import nn

from ..attach.backbone import AttentionSlot
from ..records.measurement import Measurement, macs_measurement  # noqa: F401  (macs_measurement: imported from here too)
from .macs_dispatch import count_forward_macs
from .macs_rules import ELEMENTWISE, MATMUL, NORM, RULES, RuleError, Shape, apply, rule_of
from .traffic import TRAFFIC_RULE

FVCORE = "fvcore"  # key prefix of fvcore's own (unmodified) counts inside the trace's counters


@dataclass(frozen=True)
class FlopCount:
    """MACs of one eval-mode forward (the name is kept: other code imports it)."""

    total: int  # conv_linear_matmul + elementwise + norm (trace counter)
    fvcore: int  # fvcore's FlopCountAnalysis with its default handles, unmodified
    elementwise: int  # element-wise ops, reductions, pools, softmax, ... by our rules
    attention: int  # part of total inside attached attention modules
    unhandled: Dict[str, int] = field(default_factory=dict)  # operator -> occurrences, never dropped
    by_operator: Dict[str, int] = field(default_factory=dict)
    conv_linear_matmul: int = 0  # style-independent part: conv, linear, matmul, bmm, einsum, sdpa matmuls
    norm: int = 0  # normalisation layers
    dispatch_total: int = 0  # the dispatch-level counter's total
    counter_difference: str = ""  # empty when both counters agree
    # From the dispatch-level pass (rules: ``traffic.TRAFFIC_RULE``): memory traffic and operator calls,
    # whole network and inside the attached modules (``*_attention``; per site in ``bytes_sites``).
    bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_params: int = 0
    operators: int = 0
    operators_no_traffic: int = 0
    bytes_attention: int = 0
    operators_attention: int = 0
    bytes_sites: Dict[str, int] = field(default_factory=dict)
    bytes_by_operator: Dict[str, int] = field(default_factory=dict)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: MACs per byte moved (0 when nothing moved)."""
        return self.total / self.bytes if self.bytes else 0.0

    @property
    def counters_agree(self) -> bool:
        return self.total == self.dispatch_total


@lru_cache(maxsize=None)
def _argument_names(schema: str) -> List[str]:
    return [a.name for a in torch._C.parse_schema(schema).arguments]


def _jit_value(v) -> Any:
    """A traced value as a rule sees it: a Shape, a constant (sizes read through ``x.shape[i]``),
    a list of those, or None (not known from the trace)."""
    node, kind = v.node(), v.node().kind()
    inputs = [_jit_value(i) for i in node.inputs()] if kind in _PASS_THROUGH else None
    if kind == "prim::Constant":
        value = v.toIValue()
        return Shape(value.shape) if isinstance(value, torch.Tensor) else value
    if kind in ("aten::Int", "prim::NumToTensor", "aten::ScalarImplicit"):
        return inputs[0]
    if kind == "aten::size" and len(inputs) == 2:
        shape, dim = inputs
        return shape[dim] if isinstance(shape, Shape) and isinstance(dim, int) else None
    if kind == "prim::ListConstruct":
        return None if any(i is None for i in inputs) else inputs
    if isinstance(v.type(), torch._C.TensorType) and v.type().sizes() is not None:
        return Shape(v.type().sizes())
    return None


_PASS_THROUGH = ("aten::Int", "prim::NumToTensor", "aten::ScalarImplicit", "aten::size", "prim::ListConstruct")


def _jit_args(inputs, outputs) -> Dict[str, Any]:
    node = outputs[0].node()
    try:
        names = _argument_names(node.schema())
    except RuntimeError as exc:  # "(no schema)"
        raise RuleError(str(exc)) from None
    return {name: _jit_value(v) for name, v in zip(names, inputs)}


def _shape_arithmetic(outputs) -> bool:
    """0-dim integer tensors in a trace are Python ints when run eagerly (e.g. ``h * w - 1``): free."""
    types = [o.type() for o in outputs]
    return all(
        isinstance(t, torch._C.TensorType) and t.sizes() == [] and t.scalarType() in ("Long", "Int", "Bool")
        for t in types
    )


def _as_int(count) -> int:
    return int(sum(count.values())) if isinstance(count, Counter) else int(count)


def _trace_handle(op: str, unreadable: Counter):
    """fvcore handle: our rule under '<category>|<op>', fvcore's own count under 'fvcore|<op>'."""
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    theirs, label = _DEFAULT_SUPPORTED_OPS.get(op), op.split("::")[-1]

    def handle(inputs, outputs) -> Counter:
        counts = Counter()
        if _shape_arithmetic(outputs):
            return counts
        if theirs is not None:
            counts[f"{FVCORE}|{label}"] = _as_int(theirs(inputs, outputs))
        try:
            if rule_of(op) == "product":
                if theirs is None:
                    raise RuleError("fvcore has no formula")
                fv = theirs(inputs, outputs)  # fvcore names convolutions 'conv'
                names = fv if isinstance(fv, Counter) else {label: fv}
                counts.update({f"{MATMUL}|{k}": int(v) for k, v in names.items()})
            else:
                outs = [
                    Shape(o.type().sizes())
                    for o in outputs
                    if isinstance(o.type(), torch._C.TensorType) and o.type().sizes() is not None
                ]
                counts.update({f"{cat}|{label}": n for cat, n in apply(op, _jit_args(inputs, outputs), outs).items()})
        except RuleError:
            unreadable[op] += 1
        return counts

    return handle


def _trace_handles(unreadable: Counter) -> Dict[str, Any]:
    handles = {}
    for name, rule in RULES.items():
        for op in (f"aten::{name}", f"aten::{name}_"):
            handles[op] = None if rule == "free" else _trace_handle(op, unreadable)
    return handles


def _sum(counts: Dict[str, int], prefix: str) -> int:
    return int(sum(v for k, v in counts.items() if k.startswith(prefix + "|")))


def _ours(counts: Dict[str, int]) -> int:
    return int(sum(v for k, v in counts.items() if not k.startswith(FVCORE + "|")))


def _difference(trace: Dict[str, int], dispatch: Dict[str, int], unhandled: Dict[str, int]) -> str:
    """Name what differs: per category, then unhandled operators (operator names differ between levels:
    the trace's linear/softmax/batch_norm are addmm/_softmax/native_batch_norm at dispatch)."""
    parts = [
        f"{cat}: trace {trace.get(cat, 0):,} vs dispatch {dispatch.get(cat, 0):,}"
        for cat in (MATMUL, ELEMENTWISE, NORM)
        if trace.get(cat, 0) != dispatch.get(cat, 0)
    ]
    if unhandled:
        parts.append(f"unhandled {unhandled}")
    return "; ".join(parts)


def count_flops(model: nn.Module, inputs) -> FlopCount:
    """Count MACs of an eval-mode forward by the stated rules, with both counters."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    unreadable: Counter = Counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, inputs)
            analysis._ignored_ops = set()  # fvcore silently skips eq, gt, gather, masked_fill, max, relu ...
            analysis.set_op_handle(**_trace_handles(unreadable))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            with torch.no_grad():
                by_op = dict(analysis.by_operator())
                by_module = analysis.by_module_and_operator()
                unhandled = Counter(analysis.unsupported_ops()) + unreadable
    finally:
        model.train(was_training)
    dispatch = count_forward_macs(model, inputs)
    unhandled.update(dispatch.unhandled)
    ours = Counter()
    for key, value in by_op.items():
        if not key.startswith(FVCORE + "|"):
            ours[key.split("|", 1)[1]] += int(value)
    total = _ours(by_op)
    sites = [n for n, m in model.named_modules() if isinstance(m, AttentionSlot)]
    tracked = {n: f"{type(model).__name__}.{n}" for n in sites}  # the module tracker's names for them
    return FlopCount(
        total=total,
        fvcore=_sum(by_op, FVCORE),
        elementwise=_sum(by_op, ELEMENTWISE),
        attention=sum(_ours(by_module.get(s, {})) for s in sites),
        unhandled={k: int(v) for k, v in sorted(unhandled.items())},
        by_operator=dict(sorted(ours.items())),
        conv_linear_matmul=_sum(by_op, MATMUL),
        norm=_sum(by_op, NORM),
        dispatch_total=dispatch.total,
        counter_difference=""
        if total == dispatch.total and not unhandled
        else _difference(
            {MATMUL: _sum(by_op, MATMUL), ELEMENTWISE: _sum(by_op, ELEMENTWISE), NORM: _sum(by_op, NORM)},
            {MATMUL: dispatch.conv_linear_matmul, ELEMENTWISE: dispatch.elementwise, NORM: dispatch.norm},
            dict(unhandled),
        ),
        bytes=dispatch.bytes,
        bytes_read=dispatch.bytes_read,
        bytes_written=dispatch.bytes_written,
        bytes_params=dispatch.bytes_params,
        operators=dispatch.operators,
        operators_no_traffic=dispatch.operators_no_traffic,
        bytes_attention=sum(dispatch.bytes_by_module.get(t, 0) for t in tracked.values()),
        operators_attention=sum(dispatch.operators_by_module.get(t, 0) for t in tracked.values()),
        bytes_sites={n: dispatch.bytes_by_module.get(t, 0) for n, t in tracked.items()},
        bytes_by_operator=dispatch.bytes_by_operator,
    )


def measure_flops(model: nn.Module, inputs) -> Measurement:
    fc = count_flops(model, inputs)
    stats = {
        "conv_linear_matmul": fc.conv_linear_matmul,
        "elementwise": fc.elementwise,
        "norm": fc.norm,
        "attention": fc.attention,
        "unhandled": fc.unhandled,
        "by_operator": fc.by_operator,
        "fvcore": fc.fvcore,
        "dispatch_total": fc.dispatch_total,
        "counters_agree": fc.counters_agree,
    }
    if fc.counter_difference:
        stats["counter_difference"] = fc.counter_difference
    stats.update(traffic_stats(fc))
    return macs_measurement(
        "macs",
        fc.total,
        inputs,
        stats,
        "multiply-adds by attnbench's stated rules over fvcore's trace (conv/linear/matmul by "
        "fvcore), checked by a dispatch-level counter (torch FlopCounterMode); memory traffic "
        "and operator calls from the dispatch-level pass: " + TRAFFIC_RULE,
    )


def traffic_stats(fc: FlopCount) -> Dict[str, Any]:
    """What a ``macs`` record keeps of the traffic count (whole network, inside the attached modules, per site)."""
    return {
        "bytes": fc.bytes,
        "bytes_read": fc.bytes_read,
        "bytes_written": fc.bytes_written,
        "bytes_params": fc.bytes_params,
        "operators": fc.operators,
        "operators_no_traffic": fc.operators_no_traffic,
        "intensity": fc.intensity,
        "bytes_attention": fc.bytes_attention,
        "operators_attention": fc.operators_attention,
        "bytes_sites": fc.bytes_sites,
        "bytes_by_operator": fc.bytes_by_operator,
    }
