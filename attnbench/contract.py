"""The plugin contract: what attnbench asks of an attention module, in one place.

A module is registered as a *factory* -- a class or function -- under the ``attnbench.modules``
entry-point group. attnbench calls ``factory(channels, **options, **context)``:

- ``channels`` is passed **positionally**, so the factory's first parameter receives the site's
  channel count whatever it is named (``attnbench check`` flags a first parameter that does not look
  like one: ``groups``, ``no_spatial``, ``kernel_size`` ...);
- ``options`` are the suite's / ``-O`` keywords for the module (placement options are taken out);
- ``context`` holds those of :data:`CONTEXT_KEYS` the factory's signature *names* (``**kwargs`` gets none).

The module must map ``(N, C, H, W)`` to the same shape (in place of a conv: ``(N, out_channels,
ceil(H/stride), ceil(W/stride))``), keep every tensor that is state in ``parameters()``/``buffers()``
(``nn.ModuleList``/``nn.ModuleDict``, ``register_buffer``), not write into its input, and create any
tensor in ``forward`` on the input's device. Optional class attributes: ``placement`` ("block",
"conv" or "stage") and ``default_stages`` (a list of 1-based stages or a rule such as "last"),
``includes_norm_act`` (conv placement: it brings its own norm + activation).
"""
from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import nn

from .errors import AttnBenchError

# Keywords a factory may declare (by name, in its signature) to be told about its site:
# feat_size ((H, W) of the site's input at the suite's input size), stride (of a replaced conv; 1
# elsewhere), stage (1-based), block_index (0-based within the stage), out_channels (of a replaced
# conv; ``channels`` elsewhere).
CONTEXT_KEYS = ("feat_size", "stride", "stage", "block_index", "out_channels")
PLACEMENTS = ("block", "conv", "stage")


@runtime_checkable
class AttentionFactory(Protocol):
    """What the ``attnbench.modules`` entry point must be (a class with such an ``__init__`` is one).

    Optional attributes (read with ``getattr``, so a plain function need not have them):
    ``placement: str``, ``default_stages: Union[Sequence[int], str]``, ``includes_norm_act: bool``."""

    def __call__(self, channels: int, **options) -> nn.Module: ...


Stages = Union[Sequence[int], str]  # the type of ``default_stages``


# ---- state that parameters()/buffers() cannot see --------------------------------------------

_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules"})


def _hidden_in(value, path: str, depth: int = 0):
    """(path, object) for every tensor or module inside a plain attribute value (lists, tuples,
    dicts, sets, two levels deep)."""
    if isinstance(value, (torch.Tensor, nn.Module)):
        yield path, value
    elif depth < 2 and isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            yield from _hidden_in(item, f"{path}[{i}]", depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for key, item in value.items():
            yield from _hidden_in(item, f"{path}[{key!r}]", depth + 1)


def _recomputed(module: nn.Module, attr: str) -> bool:
    """torch's weight_norm / spectral_norm keep ``weight`` as a plain attribute recomputed before each
    forward from registered ``weight_g``/``weight_v`` or ``weight_orig``."""
    return any(attr + suffix in module._parameters for suffix in ("_v", "_orig"))


def hidden_state(module: nn.Module) -> List[Tuple[str, object]]:
    """Tensors and modules a module holds where ``parameters()``/``buffers()``/``.to()``/``state_dict()``
    cannot see them: plain tensor attributes, modules or tensors in plain lists, dicts or tuples.

    Why: such a module reports +0 parameters, is not moved by ``.to(device)``, and trips TorchScript
    tracing. Not reported: objects also registered elsewhere in the module, and tensors computed from
    parameters (a ``grad_fn``: old-style ``weight_norm`` keeps ``weight`` that way)."""
    seen = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    seen |= {id(m) for m in module.modules()}
    found, reported = [], set()
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr in _MODULE_INTERNALS or _recomputed(sub, attr):
                continue
            for path, obj in _hidden_in(value, f"{name}.{attr}" if name else attr):
                if id(obj) in seen or id(obj) in reported:
                    continue
                if isinstance(obj, torch.Tensor) and obj.grad_fn is not None:
                    continue
                reported.add(id(obj))
                found.append((path, obj))
    return found


def hidden_numel(found: Sequence[Tuple[str, object]]) -> int:
    """Elements held by hidden tensors and by the parameters and buffers of hidden modules."""
    tensors: Dict[int, torch.Tensor] = {}
    for _, obj in found:
        for t in ([obj] if isinstance(obj, torch.Tensor) else [*obj.parameters(), *obj.buffers()]):
            tensors[id(t)] = t
    return sum(t.numel() for t in tensors.values())


# ---- where a plugin failed -------------------------------------------------------------------

def _library_roots() -> Tuple[str, ...]:
    roots = [Path(torch.__file__).parent, Path(__file__).parent, Path(sysconfig.get_paths()["stdlib"])]
    return tuple(str(r.resolve()) + "/" for r in roots)


def plugin_frame(exc: BaseException) -> Optional[str]:
    """``file.py:LINE`` of the innermost traceback frame outside torch, attnbench and the standard
    library -- the plugin's own line -- or None when every frame is library code."""
    roots = _library_roots()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = str(Path(frame.filename).resolve())
        if not path.startswith(roots) and not frame.filename.startswith("<"):
            return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}"
    return None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's messages run over many lines)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """One line: the error and, when it came from plugin code, where (``at gate.py:12``); attnbench's
    own errors already say what and where."""
    if isinstance(exc, AttnBenchError):
        return first_line(exc).partition(": ")[2] or type(exc).__name__
    where = plugin_frame(exc)
    return first_line(exc) + (f" (at {where})" if where else "")
