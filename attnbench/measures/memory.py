"""Two device-independent memory measures of a built model: counted, not read off an allocator.

``measure_activations``: elements of every new tensor one eval forward creates (what an
inference-time activation budget is made of, independent of allocator caching and freeing order).
``measure_saved_memory``: bytes autograd keeps for backward after one training forward (what
training memory grows with, beyond parameters and optimizer state).
Both are per image: the batch's count divided by its size. ``train_memory``'s per-image figure depends on
the batch it was measured at: part of what autograd saves does not grow with the batch (BatchNorm's saved
mean and inverse std, one per channel), so it is spread over fewer images at a small batch. Records keep
the batch and the whole batch's bytes (``saved_bytes``); compare train_memory rows at one batch size.
"""

from __future__ import annotations

import warnings
import weakref
from collections import Counter
from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..records.measurement import Measurement

ACTIVATION_RULE = (
    "elements of every aten operator output that is a new tensor, one eval forward under no_grad, "
    "per image; an output that aliases an input counts 0: schema alias annotation (views such as "
    "view/permute/expand/slice/select/t/unsqueeze/detach/split, in-place ops such as relu_/add_/mul_, "
    "out= writes) or sharing an input's storage (_unsafe_view after reshape's copy); the input is "
    "not counted, the output is"
)
SAVED_RULE = (
    "bytes of the distinct storages autograd saves for backward in one train-mode forward "
    "(saved_tensors_hooks, counted while the output's graph holds them), per image; a storage "
    "saved twice or through two views counts once; storages of model parameters and buffers are "
    "excluded (resident anyway); the input counts if saved (the first conv saves it for its weight grad); the "
    "per-image figure holds at this batch only: BatchNorm's saved statistics (per channel) do not scale with it"
)

# What fvcore's ActivationCountAnalysis counts (its _DEFAULT_SUPPORTED_OPS: _convolution, addmm, bmm,
# einsum, matmul, linear), as those arrive at dispatch: linear/matmul/einsum are decomposed there into
# mm/addmm/bmm (+ views and _unsafe_view, which count 0), so their output sizes are the same.
CONV_LINEAR_MATMUL = frozenset(
    {"convolution", "_convolution", "addmm", "mm", "bmm", "baddbmm", "matmul", "linear", "einsum"}
)
TOP_OPS = 8


def _storage_ptr(t: torch.Tensor):
    """The address of a tensor's storage (None when it has none: sparse, meta, some subclasses)."""
    try:
        return t.untyped_storage().data_ptr() if t.numel() else None
    except (RuntimeError, NotImplementedError):
        return None


class ActivationCounter(TorchDispatchMode):
    """Counts, per aten operator, the elements and bytes of outputs that are new tensors."""

    def __init__(self):
        super().__init__()
        self.elements: Counter = Counter()  # operator name -> elements
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        outs = out if len(returns) > 1 else (out,)
        inputs = {
            p
            for p in (_storage_ptr(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor))
            if p is not None
        }
        for ret, value in zip(returns, outs):
            if ret.alias_info is not None:  # a view or an in-place/out= result: nothing allocated
                continue
            for t in tree_leaves(value):
                if isinstance(t, torch.Tensor) and _storage_ptr(t) not in inputs:
                    self.elements[func._overloadpacket.__name__] += t.numel()
                    self.bytes += t.numel() * t.element_size()
        return out


def _fvcore_activations(model: nn.Module, x: torch.Tensor):
    """fvcore's own total (raw elements for the whole batch; only its ``activation_count`` helper
    divides by 1e6), or the reason it could not trace the model."""
    from fvcore.nn import ActivationCountAnalysis

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = ActivationCountAnalysis(model, (x,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            with torch.no_grad():
                return int(analysis.total()), None
    except Exception as exc:  # a model the tracer cannot handle still gets the dispatch count
        return None, f"{type(exc).__name__}: {exc}"


def _per_image(total: int, n: int):
    return total // n if total % n == 0 else total / n


def measure_activations(model: nn.Module, x: torch.Tensor) -> Measurement:
    """Activation elements per image of one eval forward (rule: ``ACTIVATION_RULE``).

    Every aten output that is a new tensor counts its elements -- including non-float ones, e.g.
    the int64 indices CPU max-pooling returns even under no_grad; views, detach and in-place results
    count 0. no_grad (not inference_mode) so the operators are the ones an eval forward runs.
    stats, all per image: ``fvcore`` (fvcore's ActivationCountAnalysis: conv/linear/matmul/einsum
    outputs only), ``conv_linear_matmul`` (this count restricted to the same operators; equal on
    resnet18 (tested), differs where dispatch lowers differently: an einsum with no contraction
    arrives as ``sum`` and leaves this set, fvcore still counts it; fused SDPA is in neither),
    ``by_op`` (largest operators), ``bytes_per_image`` (elements x each output's own element size,
    4 for fp32, 8 for int64 indices).
    """
    n = x.shape[0]
    was_training = model.training
    model.eval()
    counter = ActivationCounter()
    try:
        with torch.no_grad(), counter:
            model(x)
        fvcore, fvcore_error = _fvcore_activations(model, x)
    finally:
        model.train(was_training)
    total = sum(counter.elements.values())
    clm = sum(v for k, v in counter.elements.items() if k in CONV_LINEAR_MATMUL)
    stats = {
        "fvcore": None if fvcore is None else _per_image(fvcore, n),
        "conv_linear_matmul": _per_image(clm, n),
        "by_op": {k: _per_image(v, n) for k, v in counter.elements.most_common(TOP_OPS) if v},
        "bytes_per_image": _per_image(counter.bytes, n),
        "batch": n,
    }
    if fvcore_error:
        stats["fvcore_error"] = fvcore_error
    return Measurement(
        metric="activations",
        value=_per_image(total, n),
        unit="elements",
        method=f"TorchDispatchMode count: {ACTIVATION_RULE}",
        settings={"input": list(x.shape[1:]), "batch": n, "dtype": str(x.dtype).replace("torch.", "")},
        stats=stats,
    )


class _Saved:
    """What the pack hook hands autograd: while the graph holds it, the saved tensor is held."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_storages(model: nn.Module, x: torch.Tensor) -> Tuple[Dict[int, Tuple[int, str]], int]:
    """{storage address: (bytes, dtype)} of what one train-mode forward's graph holds for backward,
    parameters and buffers excluded, and the bytes excluded. Model state is put back afterwards
    (mode, buffers such as BatchNorm running statistics, the CPU RNG dropout draws from)."""
    resident = {p for p in (_storage_ptr(t) for t in [*model.parameters(), *model.buffers()]) if p is not None}
    packed = []  # (weakref to what the graph holds, storage, address, bytes, dtype); holding the
    # storage stops a freed buffer's address being reused by a later, different one

    def pack(t):
        # hold a detached alias (same storage), never ``t``: a saved output's grad_fn would hold this
        # object, which would hold the output, a cycle through C++ that gc never frees (a leak)
        saved, dtype = _Saved(t.detach()), str(t.dtype).replace("torch.", "")
        try:
            storage = t.untyped_storage()
            packed.append((weakref.ref(saved), storage, storage.data_ptr(), storage.nbytes(), dtype))
        except (RuntimeError, NotImplementedError):  # no storage: count its elements, keyed by object
            packed.append((weakref.ref(saved), None, id(saved), t.numel() * t.element_size(), dtype))
        return saved

    buffers = [(b, b.clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        with (
            torch.random.fork_rng(devices=[]),
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor),
        ):
            out = model(x)
        found, excluded = {}, {}
        for ref, _, ptr, nbytes, dtype in packed:
            if ref() is None or not nbytes:  # freed with a branch the output does not depend on
                continue
            (excluded if ptr in resident else found)[ptr] = (nbytes, dtype)
        del out  # frees the graph and with it everything saved
    finally:
        packed.clear()
        with torch.no_grad():
            for b, before in buffers:
                b.copy_(before)
        model.train(was_training)
    return found, sum(b for b, _ in excluded.values())


def measure_saved_memory(model: nn.Module, x: torch.Tensor) -> Measurement:
    """Bytes per image autograd saves for backward in one training forward (rule: ``SAVED_RULE``).

    Measured exactly with saved_tensors_hooks, deduplicated by storage: BatchNorm's input and an
    in-place ReLU's output that is the same buffer as another saved tensor count once. No loss is
    built: logits.sum() saves nothing, cross-entropy would add its (N, classes) log-probabilities.
    stats: ``saved_bytes`` (whole batch), ``tensors`` (distinct storages), ``excluded_param_bytes``
    (parameter/buffer storages that were saved, not counted), ``input_bytes`` (the input's part of
    the count, 0 if not saved), ``by_dtype``, ``batch``.
    """
    n = x.shape[0]
    found, excluded = saved_storages(model, x)
    total = sum(b for b, _ in found.values())
    by_dtype: Counter = Counter()
    for nbytes, dtype in found.values():
        by_dtype[dtype] += nbytes
    return Measurement(
        metric="train_memory",
        value=_per_image(total, n),
        unit="bytes",
        method=f"saved_tensors_hooks: {SAVED_RULE}",
        settings={"input": list(x.shape[1:]), "batch": n, "dtype": str(x.dtype).replace("torch.", "")},
        stats={
            "saved_bytes": total,
            "tensors": len(found),
            "excluded_param_bytes": excluded,
            "input_bytes": found.get(_storage_ptr(x), (0, None))[0],
            "by_dtype": dict(by_dtype),
            "batch": n,
        },
    )
