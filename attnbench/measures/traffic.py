"""Memory traffic of one operator call: the bytes it reads and writes, by a stated model (no cache simulation).

The model is ShuffleNet V2's memory access cost (Ma et al., ECCV 2018, Sec. 2, G1: a 1x1 conv moves
hw(c1 + c2) + c1c2 elements) applied to every operator the dispatch-level counter sees:

- an operator reads each distinct element of each tensor argument once and writes each element of each
  output once, at that tensor's own element size (the record's dtype for activations and weights: float32
  here; 8 bytes for the int64 indices CPU max-pooling writes);
- nothing stays in a cache *between* operators (each operator reads its inputs from memory, even the
  output the previous one just wrote, and weights are read again by every call that uses them), and
  nothing is read twice *within* one (a conv reads its input once, whatever its kernel re-reads): a lower
  bound per kernel, an upper bound across kernels that a fused or cache-resident runtime moves less than;
- views are free: an operator whose outputs all alias an input (view, permute, expand, slice, t,
  unsqueeze, ``_unsafe_view`` after reshape's copy, ...) moves nothing; copies (clone, contiguous on a
  strided tensor, cat, pad) move what they read and write;
- an in-place operator (``relu_``, ``add_``) reads its arguments, ``self`` included, and writes ``self``
  once; an ``out=`` argument is written, not read; operators that only overwrite ``self`` (``copy_``,
  ``fill_``, ``zero_``, random fills) do not read it; a bare allocation (``empty``) moves nothing;
- a broadcast argument counts its stored elements (a dimension of stride 0 counts once: SE's (N, C, 1, 1)
  gate is C elements per image, not C x H x W); the same tensor passed twice is read once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Set

import torch
from torch.utils._pytree import tree_leaves

TRAFFIC_RULE = (
    "bytes each aten operator reads (every distinct element of its tensor arguments once, weights included, "
    "re-read by every call) plus the bytes it writes (its outputs once), at each tensor's element size; no "
    "cache between operators, none needed within one (ShuffleNet V2's memory access cost); views free, "
    "in-place operators write once, bare allocations free; one eval forward under no_grad"
)

# Operators that overwrite ``self`` without reading it (base names, in-place forms).
WRITE_ONLY = frozenset(
    {
        "copy_",
        "fill_",
        "zero_",
        "normal_",
        "uniform_",
        "bernoulli_",
        "random_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
        "resize_",
        "set_",
    }
)
# Allocations whose contents are never written: no traffic (they still count as operator calls).
ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted"})


@dataclass(frozen=True)
class OpTraffic:
    read: int  # bytes read
    written: int  # bytes written
    params: int  # the part of ``read`` that is parameters and buffers (weights re-read by each call)

    @property
    def total(self) -> int:
        return self.read + self.written


def _storage_ptr(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr() if t.numel() else None
    except (RuntimeError, NotImplementedError):
        return None


def footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor (or view) holds: dims of stride 0 (broadcast) count once,
    never more than its storage (overlapping windows)."""
    if t.numel() == 0:
        return 0
    try:
        n = math.prod(s for s, st in zip(t.shape, t.stride()) if st != 0)
    except (RuntimeError, NotImplementedError):  # no strides (sparse and other layouts): every element
        n = t.numel()
    nbytes = n * t.element_size()
    try:
        return min(nbytes, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # no storage (meta, wrapper subclasses): its elements
        return nbytes


def _view_key(t: torch.Tensor):
    """Identifies one view of one storage: the same tensor passed twice is read once, two slices of one
    buffer (q, k, v) are two reads."""
    try:
        return (_storage_ptr(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
    except (RuntimeError, NotImplementedError):
        return ("id", id(t))


def _tensors(value) -> Iterable[torch.Tensor]:
    return (t for t in tree_leaves(value) if isinstance(t, torch.Tensor))


def op_traffic(func, args, kwargs, out, resident: Set[int]) -> OpTraffic:
    """Bytes one call of ``func`` (an OpOverload) moves by the model above; ``resident`` holds the storage
    addresses of the model's parameters and buffers (reported apart as ``params``)."""
    schema = func._schema
    name = func._overloadpacket.__name__
    if name in ALLOCATIONS:
        return OpTraffic(0, 0, 0)
    bound = dict(zip((a.name for a in schema.arguments), args), **(kwargs or {}))
    write_args = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    inputs = []  # (tensor, read?)
    for arg, value in bound.items():
        read = arg not in write_args or (arg == "self" and name not in WRITE_ONLY)  # in-place reads self; out= does not
        inputs += [(t, read) for t in _tensors(value)]
    input_ptrs = {_storage_ptr(t) for t, _ in inputs} - {None}
    returns = schema.returns
    outs = out if len(returns) > 1 else (out,)
    written, seen_out, fresh_or_written = 0, set(), False
    for ret, value in zip(returns, outs):
        for t in _tensors(value):
            info = ret.alias_info
            if info is not None and not info.is_write:
                continue  # a view of an input
            if info is None and _storage_ptr(t) in input_ptrs:
                continue  # shares an input's storage without saying so (_unsafe_view after reshape's copy)
            fresh_or_written = True
            key = _view_key(t)
            if key not in seen_out:
                seen_out.add(key)
                written += footprint(t)
    has_tensor_out = any(True for v in outs for _ in _tensors(v))
    if has_tensor_out and not fresh_or_written:
        return OpTraffic(0, 0, 0)  # a view: nothing read, nothing written
    read = params = 0
    seen_in = set()
    for t, is_read in inputs:
        key = _view_key(t)
        if not is_read or key in seen_in:
            continue
        seen_in.add(key)
        b = footprint(t)
        read += b
        if _storage_ptr(t) in resident:
            params += b
    return OpTraffic(read, written, params)


def resident_storages(model: torch.nn.Module) -> Set[int]:
    """Storage addresses of a model's parameters and buffers (the weights part of the traffic)."""
    if model is None:
        return set()
    return {p for p in (_storage_ptr(t) for t in [*model.parameters(), *model.buffers()]) if p is not None}
