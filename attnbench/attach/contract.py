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
tensor in ``forward`` on the input's device. Optional class attributes: ``placement`` (one of
:data:`PLACEMENTS`, or a dict from block kind -- "basic", "bottleneck", "resnext", "inverted_residual",
"depthwise_separable", "default" -- to a placement or None, where the official code differs per
family) and ``default_stages`` (a list of 1-based stages or a rule such as "last"),
``includes_norm_act`` (conv placement: it brings its own norm + activation), and documented limits
(:data:`LIMITS`): ``min_spatial`` (smallest H and W it supports), ``min_train_batch`` (smallest batch
it can train at) and ``limits_note`` (why). ``attnbench check``, the runner and the tables respect them:
a cell outside a declared limit is ``unsupported`` with the reason, never a failure or a NaN row.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import re
import sys
import sysconfig
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import nn

from ..errors import AttnBenchError

# Keywords a factory may declare (by name, in its signature) to be told about its site:
# feat_size ((H, W) of the site's input at the suite's input size), stride (of a replaced conv; 1
# elsewhere), stage (1-based), block_index (0-based within the stage), out_channels (of a replaced
# conv; ``channels`` elsewhere), conv_groups (groups of a replaced conv; 1 elsewhere: SK builds the
# SK-ResNet unit in place of a dense 3x3 and the SKNet unit in place of a ResNeXt's grouped one),
# block_kind (the site's block: "basic", "bottleneck", "resnext", "inverted_residual",
# "depthwise_separable", or "" outside known blocks: ECA takes the official MobileNetV2 kernel there).
_PACKAGE = Path(__file__).resolve().parents[1]  # attnbench/: the harness, whose frames are nobody's module line
CONTEXT_KEYS = ("feat_size", "stride", "stage", "block_index", "out_channels", "conv_groups", "block_kind")
# Where a module can go (see attach.py): a block's attention slot, after the last norm of the residual
# branch, right after the block's spatial conv, in place of that conv, or after stages.
PLACEMENTS = ("block", "output", "after_conv", "conv", "stage")


@runtime_checkable
class AttentionFactory(Protocol):
    """What the ``attnbench.modules`` entry point must be (a class with such an ``__init__`` is one).

    Optional attributes (read with ``getattr``, so a plain function need not have them):
    ``placement: str`` (or a dict per block kind), ``default_stages: Union[Sequence[int], str]``,
    ``includes_norm_act: bool``."""

    def __call__(self, channels: int, **options) -> nn.Module: ...


Stages = Union[Sequence[int], str]  # the type of ``default_stages``


# ---- documented limits -------------------------------------------------------------------------

LIMITS = ("min_spatial", "min_train_batch")  # optional class attributes, positive ints (default 1)


@dataclass(frozen=True)
class Limits:
    """What a module declares it cannot do (the official code's own behaviour, documented rather than hidden).

    ``min_spatial``: H and W below it are outside (SimAM divides by H*W - 1); ``min_train_batch``: a
    training step at a smaller batch is outside (BatchNorm over pooled (N, C) features needs N >= 2)."""

    min_spatial: int = 1
    min_train_batch: int = 1
    note: str = ""  # the module's ``limits_note``: why

    def _why(self) -> str:
        return f" ({self.note})" if self.note else ""

    def spatial(self, size: Sequence[int]) -> Optional[str]:
        """Why an (H, W) input is outside the limits, or None."""
        if min(int(s) for s in size[-2:]) < self.min_spatial:
            return f"declares min_spatial {self.min_spatial}{self._why()}: {size[-2]}x{size[-1]} is below it"
        return None

    def train_batch(self, batch: int) -> Optional[str]:
        """Why a training step at ``batch`` is outside the limits, or None."""
        if batch < self.min_train_batch:
            return f"declares min_train_batch {self.min_train_batch}{self._why()}: batch {batch} is below it"
        return None


def declared_limits(factory: Callable) -> Limits:
    """The limits a factory declares (class attributes or attributes set on a function); ValueError for a
    malformed declaration (a limit that is not a positive int)."""
    values = {}
    for key in LIMITS:
        value = getattr(factory, key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
        values[key] = value
    note = getattr(factory, "limits_note", "")
    return Limits(note=note if isinstance(note, str) else "", **values)


# ---- binding: can factory(channels, **options) be called, and the adapter that fits if not ----------

# Words a channel-count parameter is named with (split at '_' and digits): channels, in_chs, dim, C, planes, ...
CHANNEL_WORDS = frozenset(
    "c ch chs chan chans channel channels chn nc inc inp planes inplanes dim dims d "
    "features feature feats feat nf width filters".split()
)
OUT_WORDS = frozenset("out oup outp output outs".split())  # out_channels, oup, out_planes: the same width here
# Words that make a name with a channel word something else: MONAI's ``spatial_dims`` (2 for images) and
# ``kernel_size``-like parameters are not channel counts, although "dims" alone is one.
NOT_CHANNEL_WORDS = frozenset("spatial ndim ndims kernel stride groups heads".split())
# Parameters that name the dimensionality of the data (MONAI's blocks serve 1-D, 2-D and 3-D): 2 for images.
DIMENSIONALITY = frozenset({"spatial_dims", "spatial_dim", "ndim", "ndims", "n_dims", "num_dims", "dimensions"})


def _tokens(name: str) -> set:
    return {t for t in re.split(r"[_\d]+", name.lower()) if t}


def looks_like_channels(param: inspect.Parameter) -> bool:
    """A parameter named like a channel count and not typed or defaulted as a flag/float/string."""
    typed = param.annotation in (bool, float, str, "bool", "float", "str")
    tokens = _tokens(param.name)
    return (
        bool(tokens & CHANNEL_WORDS)
        and not tokens & NOT_CHANNEL_WORDS
        and param.name not in DIMENSIONALITY
        and not typed
        and not isinstance(param.default, (bool, float, str))
    )


def factory_name(factory: Callable) -> str:
    name = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or type(factory).__name__
    return "factory" if "<lambda>" in name else name.rsplit(".", 1)[-1]


def adapter_advice(factory: Callable) -> str:
    """One line: the adapter that fits this factory's real signature. The channel count goes to the
    parameter named like one (or nowhere, saying so); parameters without a default get a placeholder,
    or ``channels`` when they name an output width; ``**kw`` passes the suite's options through."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return "register an adapter `lambda channels, **kw: Module(...)` that builds it from the channel count"
    name = factory_name(factory)
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    chan = next((p for p in params if looks_like_channels(p) and not _tokens(p.name) & OUT_WORDS), None)
    args = []
    for p in params:
        if p is chan:
            args.append("channels" if p is params[0] and p.kind != p.KEYWORD_ONLY else f"{p.name}=channels")
        elif p.default is p.empty and p.name not in CONTEXT_KEYS:
            value = "channels" if _tokens(p.name) & OUT_WORDS else "2" if p.name in DIMENSIONALITY else f"<{p.name}>"
            args.append(f"{p.name}={value}")
    lam = f"`lambda channels, **kw: {name}({', '.join(args + ['**kw'])})`"
    if chan is None:
        shown = ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name for p in params)
        return f"{name}({shown}) takes no channel count: register an adapter that drops it, {lam}"
    return f"register an adapter: {lam}" + (" (fill in the <placeholders>)" if "<" in lam else "")


def missing_options(factory: Callable, context: Sequence[str] = ()) -> List[str]:
    """Required parameters that options can fill, when they are all that keeps ``factory(channels)`` from binding:
    the first parameter takes the channel count, the rest have no default and name no width (smp's
    ``SEModule(channels, reduction)``: ``-O reduction=16`` is the fix, not an adapter). Else []."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return []
    if (
        not params
        or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
        or not looks_like_channels(params[0])
    ):
        return []
    missing = [
        p
        for p in params[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in context
    ]
    if not missing or any(
        p.kind == p.POSITIONAL_ONLY or _tokens(p.name) & (CHANNEL_WORDS | OUT_WORDS) or p.name in DIMENSIONALITY
        for p in missing
    ):
        return []
    return [p.name for p in missing]


def binding_advice(factory: Callable, context: Sequence[str] = (), module: str = "") -> str:
    """One line: the fix for a factory that ``factory(channels)`` cannot call -- options, where only options
    are missing (``-O reduction=16``; in a suite the module's options), else the adapter that fits."""
    names = missing_options(factory, context)
    if not names:
        return adapter_advice(factory)
    flags = " ".join(f"-O {n}=<{n}>" for n in names)
    entry = ", ".join(f"{n}: <{n}>" for n in names)
    suite = f"; in a suite `{{module: {module}, {entry}}}`" if module else "; in a suite, the module's options"
    return (
        f"{factory_name(factory)} needs {', '.join(repr(n) for n in names)} with no default: give "
        f"{'them' if len(names) > 1 else 'it'} as options (`{flags}`{suite}), or register an adapter that fills "
        f"{'them' if len(names) > 1 else 'it'}"
    )


def binding_problem(factory: Callable, options: Dict, context: Sequence[str] = ()) -> Optional[Tuple[str, str]]:
    """None when ``factory(channels, **options, **context)`` binds; else (what fails, whose fault): "options"
    when the factory binds without them (fix the options), "factory" when it cannot be called with a
    channel count alone (only an adapter fixes that). No introspectable signature: None (found at build)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    ctx = {k: None for k in context if k not in options}
    try:
        sig.bind(1, **options, **ctx)
        return None
    except TypeError as exc:
        error = str(exc)
    try:
        sig.bind(1, **ctx)
        return error, "options"
    except TypeError as exc:
        return str(exc), "factory"


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
    parameters (a ``grad_fn``: old-style ``weight_norm`` keeps ``weight`` that way), and 0-element tensors
    (a placeholder such as MONAI SABlock's ``att_mat = torch.Tensor()`` holds nothing to count or move)."""
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
                if isinstance(obj, torch.Tensor) and (obj.grad_fn is not None or obj.numel() == 0):
                    continue  # computed from parameters, or a 0-element placeholder (MONAI's att_mat): no state
                reported.add(id(obj))
                found.append((path, obj))
    return found


def hidden_numel(found: Sequence[Tuple[str, object]]) -> int:
    """Elements held by hidden tensors and by the parameters and buffers of hidden modules."""
    tensors: Dict[int, torch.Tensor] = {}
    for _, obj in found:
        for t in [obj] if isinstance(obj, torch.Tensor) else [*obj.parameters(), *obj.buffers()]:
            tensors[id(t)] = t
    return sum(t.numel() for t in tensors.values())


# ---- where a plugin failed -------------------------------------------------------------------


def _library_roots() -> Tuple[str, ...]:
    """torch, attnbench, the standard library and fvcore (the harness's own counter): never module code."""
    roots = [Path(torch.__file__).parent, _PACKAGE, Path(sysconfig.get_paths()["stdlib"])]
    spec = importlib.util.find_spec("fvcore")
    roots += [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    return tuple(str(r.resolve()) + "/" for r in roots)


def plugin_frame(exc: BaseException, roots: Optional[Sequence[str]] = None) -> Optional[str]:
    """``file.py:LINE`` of the plugin's own line in a traceback: the innermost frame inside the plugin's
    package (``roots``, default: those :func:`plugin_code` set; an error raised in einops or timm names the
    plugin line that called it), else, with no roots known, the innermost frame outside torch, attnbench and
    the standard library; None when there is none."""
    return module_frame(traceback.extract_tb(exc.__traceback__), builtins=False, roots=roots)


_BUILTIN_MODULES = str((_PACKAGE / "modules").resolve()) + "/"
_ROOTS: ContextVar[Tuple[str, ...]] = ContextVar("attnbench_plugin_roots", default=())


def package_roots(*objs) -> Tuple[str, ...]:
    """Where the code of the top-level packages defining ``objs`` lives (folders with a trailing /, or a
    single file): a plugin's own lines. Objects are classes, functions or module names ("pkg.mod"); nothing
    is imported (``find_spec`` of a top-level name). attnbench's built-ins are their ``modules/`` folder;
    torch and the standard library never count."""
    libraries, found = _library_roots(), []
    for obj in objs:
        name = obj if isinstance(obj, str) else getattr(obj, "__module__", None)
        if not isinstance(name, str) or not name:
            continue
        top = name.split(".")[0]
        if top == "attnbench":
            found.append(_BUILTIN_MODULES)
            continue
        module = sys.modules.get(top)
        try:
            places = (
                list(getattr(module, "__path__", None) or [getattr(module, "__file__", None)])
                if module is not None
                else (lambda spec: [] if spec is None else list(spec.submodule_search_locations or [spec.origin]))(
                    importlib.util.find_spec(top)
                )
            )
        except (ImportError, ValueError, AttributeError):
            continue
        for place in places:
            if not place or not Path(place).exists():
                continue
            root = str(Path(place).resolve()) + ("/" if Path(place).is_dir() else "")
            if not root.startswith(libraries) and root not in found:
                found.append(root)
    return tuple(found)


def class_folder(obj: object) -> Tuple[str, ...]:
    """The folder of the file defining ``obj``'s class: a module's own code where its factory is an adapter in
    another package (narrower than the package: a plugin built on ``timm.layers`` must not make timm's models
    its own code). Empty for torch's classes and the standard library's."""
    try:
        path = Path(inspect.getsourcefile(obj if isinstance(obj, type) else type(obj)) or "").resolve()
    except (TypeError, OSError):
        return ()
    if not path.is_file():
        return ()
    folder = str(path.parent) + "/"
    builtin = folder.startswith(_BUILTIN_MODULES)
    return (folder,) if builtin or not folder.startswith(_library_roots()) else ()


def current_roots() -> Tuple[str, ...]:
    """The roots :func:`plugin_code` set (empty outside it)."""
    return _ROOTS.get()


@contextlib.contextmanager
def plugin_code(roots: Sequence[str]) -> Iterator[None]:
    """Within this block, messages name lines inside ``roots`` (``package_roots`` of the module checked)."""
    token = _ROOTS.set(tuple(roots))
    try:
        yield
    finally:
        _ROOTS.reset(token)


def module_frame(
    frames: Sequence[traceback.FrameSummary],
    builtins: bool = True,
    called_by_harness: bool = False,
    roots: Optional[Sequence[str]] = None,
) -> Optional[str]:
    """``file.py:LINE`` of the innermost frame that is module code. With ``roots`` (default: those
    :func:`plugin_code` set) that is the innermost frame inside them -- the plugin's own package, never a
    library it calls or the backbone around it -- or None. Without roots: outside torch, the standard library
    and attnbench's harness (attnbench's own ``modules/`` count as module code when ``builtins``). With
    ``called_by_harness`` (a stack, innermost last) only frames the harness called count -- what runs below
    the innermost harness frame -- so a warning from a library the harness imports is nobody's module line."""
    roots = tuple(_ROOTS.get() if roots is None else roots)
    libraries, harness = _library_roots(), str(_PACKAGE.resolve()) + "/"

    def is_harness(path: str) -> bool:
        return path.startswith(harness) and not path.startswith(_BUILTIN_MODULES)

    paths = [str(Path(f.filename).resolve()) for f in frames]
    start = 0
    if called_by_harness:
        inner = [i for i, p in enumerate(paths) if is_harness(p)]
        if not inner:
            return None
        start = inner[-1] + 1
    for frame, path in reversed(list(zip(frames[start:], paths[start:]))):
        if frame.filename.startswith("<"):
            continue
        if roots:
            if not path.startswith(roots):
                continue
        elif path.startswith(libraries) and not (builtins and path.startswith(_BUILTIN_MODULES)):
            continue
        return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}"
    return None


def forward_line(module: object) -> Optional[str]:
    """``file.py:LINE`` where a module's class defines ``forward`` (what produced its output), or None."""
    try:
        fn = type(module).forward
        return f"{'/'.join(Path(inspect.getsourcefile(fn)).parts[-2:])}:{inspect.getsourcelines(fn)[1]}"
    except (TypeError, OSError, AttributeError):
        return None


ALIASED_ADVICE = (
    "return a tensor with its own memory (`x * g`, not `g.expand_as(x)`; or `.contiguous()`): "
    "a block writes into its module's output in place (`x += shortcut`)"
)


def shares_memory(t: object) -> bool:
    """Whether elements of a tensor share memory with each other (``expand``/``expand_as`` views: a stride of 0
    over a dimension longer than 1): an in-place write into it, as a block's ``x += shortcut``, cannot work."""
    return (
        isinstance(t, torch.Tensor) and 0 in t.stride() and any(n > 1 and st == 0 for n, st in zip(t.shape, t.stride()))
    )


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's messages run over many lines)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__


def describe_failure(exc: BaseException, roots: Optional[Sequence[str]] = None) -> str:
    """One line: the error and, when it came from plugin code, where (``at gate.py:12``); attnbench's
    own errors already say what and where."""
    if isinstance(exc, AttnBenchError):
        return first_line(exc).partition(": ")[2] or type(exc).__name__
    where = plugin_frame(exc, roots)
    return first_line(exc) + (f" (at {where})" if where else "")
