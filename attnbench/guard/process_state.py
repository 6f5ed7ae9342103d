"""Process-wide state a module can change for every later row, and the guard that notices and puts it back.

A plugin runs inside the harness's own process. ``torch.set_num_threads(1)``, ``set_default_dtype(float64)``,
``set_grad_enabled(False)``, a global forward hook, ``os.chdir``, an ignored SIGINT or a closed ``sys.stdout``
in its import, constructor or forward would silently change every row measured after it -- while the
records still said threads 2 / float32 -- or break the run's own output. :data:`SETTINGS` lists every such
setting the harness can read back (torch's global switches and the process's), :class:`Watch` takes a
snapshot and, after each unit of plugin work (a cell, a check step, a plugin import), puts back what
changed and says what it was. The caller fails that unit with one line naming the change (:func:`blame`),
so later rows run exactly as if the module had never run.

Left out on purpose: the random number generators (a forward may draw from them; every cell seeds its
own), warnings filters and ``sys.path`` (a library's import sets them; no number depends on them), environment
variables (torch's own lazy imports set some, e.g. ``TORCHINDUCTOR_CACHE_DIR``; libraries read them once at
start-up, not per row), the recursion limit (torch.compile raises it for itself; no number depends on it),
torch's inter-op thread count (set once per process, before any parallel work: by then the harness has run;
while unset it follows the CPU affinity, which is watched), and the process's niceness (``latency.nice``
lowers it for the run and an unprivileged process cannot raise it back, so it is the harness's to change).
``torch.set_flush_denormal`` cannot be read back, so it cannot be told.

Cells that overlap in one process (a Dask worker with several threads) share all of it: there a change
cannot be told from the other cell's own, and :func:`alone` says so (nothing is blamed or put back).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import (
    StateChanged,  # noqa: F401 (raised here)
)


@dataclass(frozen=True)
class Setting:
    """One piece of process-wide state: how to read it (a comparable value) and how to put it back."""

    name: str
    read: Callable[[], Any]
    write: Callable[[Any], None]
    show: Callable[[Any], str] = repr
    main_thread: bool = False  # signal handlers and timers exist for the main thread only


def _on_off(v: Any) -> str:
    return "on" if v else "off"


def _pair(a: str, b: str) -> Callable[[Any], str]:
    return lambda v: f"{a} {_on_off(v[0])}, {b} {_on_off(v[1])}"


def _flag(path: str) -> Optional[Setting]:
    """A boolean of ``torch.backends`` (``cudnn.benchmark``) read and written as the attribute it is."""
    owner_path, _, attr = path.rpartition(".")
    owner: Any = torch.backends
    for part in owner_path.split("."):
        owner = getattr(owner, part, None)
    if owner is None or not hasattr(owner, attr):
        return None
    return Setting(f"torch.backends.{path}", lambda: getattr(owner, attr), lambda v: setattr(owner, attr, v), _on_off)


BACKEND_FLAGS = (
    "cudnn.enabled",
    "cudnn.benchmark",
    "cudnn.deterministic",
    "cudnn.allow_tf32",
    "mkldnn.enabled",
    "cuda.matmul.allow_tf32",
    "cuda.matmul.allow_fp16_reduced_precision_reduction",
    "cuda.matmul.allow_bf16_reduced_precision_reduction",
    "opt_einsum.enabled",
    "nnpack.enabled",
)


def _default_device() -> str:
    return str(torch.get_default_device())


def _set_default_device(device: str) -> None:
    torch.set_default_device(None)  # pops the mode a set_default_device pushed
    if device != "cpu":
        torch.set_default_device(device)


def _pop_modes(length: int, current: Callable[[], int], pop: Callable[[], object]) -> None:
    """Leave ``length`` modes on a torch mode stack: a module that entered a mode and never left it."""
    while current() > length:
        pop()


def _pop_dispatch_mode() -> None:
    from torch.utils._python_dispatch import _pop_mode

    _pop_mode()


# -- global module hooks: torch.nn.modules.module's _global_* registries ----------------------------


def _hook_tables() -> Dict[str, Any]:
    from torch.nn.modules import module as m

    return {name: (dict(v) if isinstance(v, dict) else v) for name, v in vars(m).items() if name.startswith("_global_")}


def _set_hook_tables(saved: Dict[str, Any]) -> None:
    from torch.nn.modules import module as m

    for name, value in saved.items():
        current = getattr(m, name, None)
        if isinstance(current, dict) and isinstance(value, dict):
            current.clear()
            current.update(value)
        else:
            setattr(m, name, value)


def _show_hooks(tables: Dict[str, Any]) -> str:
    counts = {k.replace("_global_", ""): len(v) for k, v in tables.items() if isinstance(v, dict) and v}
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "none"


# -- the process: working folder, signals, timers, standard streams, limits ---------------------------


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the folder was removed under it
        return ""


def _chdir(path: str) -> None:
    if path:
        os.chdir(path)


def _catchable_signals() -> List[int]:
    out = []
    for s in sorted(signal.valid_signals()):
        if s in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)):
            continue
        try:
            signal.getsignal(s)
            out.append(s)
        except (ValueError, OSError):
            continue
    return out


SIGNALS = _catchable_signals()


def _handlers() -> Dict[int, Any]:
    return {s: signal.getsignal(s) for s in SIGNALS}


def _set_handlers(saved: Dict[int, Any]) -> None:
    for s, handler in saved.items():
        if handler is not None and signal.getsignal(s) is not handler:  # None: set outside Python, cannot be put back
            signal.signal(s, handler)


def _handler_name(h: Any) -> str:
    if h is signal.SIG_IGN:
        return "ignored"
    if h is signal.SIG_DFL:
        return "default"
    if h is signal.default_int_handler:
        return "KeyboardInterrupt"
    if getattr(h, "attnbench_notes", False) or getattr(h, "__module__", "").startswith("attnbench"):
        return "attnbench's"
    return getattr(h, "__qualname__", type(h).__name__)


def _show_handlers(handlers: Dict[int, Any]) -> str:
    return ", ".join(f"{signal.Signals(s).name} {_handler_name(h)}" for s, h in handlers.items())


def _alarm_armed() -> bool:
    return hasattr(signal, "getitimer") and signal.getitimer(signal.ITIMER_REAL)[0] > 0


def _disarm(armed: bool) -> None:
    if not armed and hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


STREAMS = ("stdin", "stdout", "stderr")


def _streams() -> Dict[str, Tuple[Any, bool]]:
    _remember_fds()
    return {n: (getattr(sys, n), bool(getattr(getattr(sys, n), "closed", False))) for n in STREAMS}


def _reopened(stream: Any, name: str) -> Any:
    """A working stream in place of a closed one: a new text layer over the same file descriptor (Python's own
    sys.stdout/stderr never close their descriptor), else the interpreter's original stream of that name if it
    is open, else /dev/null."""
    fd = getattr(stream, "_attnbench_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError, ValueError):
            os.fstat(fd)
            fresh = io.TextIOWrapper(
                io.FileIO(fd, "r" if name == "stdin" else "w", closefd=False),
                encoding=getattr(stream, "encoding", None) or "utf-8",
                errors=getattr(stream, "errors", None) or "strict",
                line_buffering=True,
            )
            fresh._attnbench_fd = fd
            return fresh
    original = getattr(sys, f"__{name}__", None)
    if original is not None and not original.closed:
        return original
    return open(os.devnull, "r" if name == "stdin" else "w")


def _set_streams(saved: Dict[str, Tuple[Any, bool]]) -> None:
    fresh: Dict[int, Any] = {}  # one replacement per closed object (stdout redirected to stderr stays one stream)
    for name, (obj, was_closed) in saved.items():
        if getattr(obj, "closed", False) and not was_closed:
            if id(obj) not in fresh:
                fresh[id(obj)] = _reopened(obj, name)
            obj = fresh[id(obj)]
        setattr(sys, name, obj)


def _remember_fds() -> None:
    """Note each standard stream's descriptor while it is open, so a closed one can be replaced later."""
    for name in STREAMS:
        stream = getattr(sys, name)
        if getattr(stream, "_attnbench_fd", None) is None and not getattr(stream, "closed", True):
            with contextlib.suppress(Exception):
                stream._attnbench_fd = stream.fileno()


def _show_streams(streams: Dict[str, Tuple[Any, bool]]) -> str:
    return ", ".join(f"sys.{n} {'closed' if closed else 'open'}" for n, (_, closed) in streams.items())


def _rlimits() -> Dict[str, Tuple[int, int]]:
    try:
        import resource
    except ImportError:
        return {}
    return {
        n: resource.getrlimit(getattr(resource, n))
        for n in ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_NOFILE", "RLIMIT_STACK", "RLIMIT_CPU", "RLIMIT_FSIZE")
        if hasattr(resource, n)
    }


def _set_rlimits(saved: Dict[str, Tuple[int, int]]) -> None:
    import resource

    for n, limits in saved.items():
        if resource.getrlimit(getattr(resource, n)) != limits:
            resource.setrlimit(getattr(resource, n), limits)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _affinity() -> Optional[frozenset]:
    return frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _set_affinity(cpus: Optional[frozenset]) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _cpus(v: Optional[frozenset]) -> str:
    return "unknown" if v is None else f"{len(v)} CPUs" if len(v) > 8 else "CPUs " + ",".join(map(str, sorted(v)))


def _trace() -> Tuple[Any, Any]:
    return sys.gettrace(), sys.getprofile()


def _set_trace(v: Tuple[Any, Any]) -> None:
    sys.settrace(v[0])
    sys.setprofile(v[1])


def _gc_state() -> Tuple[bool, Tuple[int, ...]]:
    return gc.isenabled(), gc.get_threshold()


def _set_gc(v: Tuple[bool, Tuple[int, ...]]) -> None:
    (gc.enable if v[0] else gc.disable)()
    gc.set_threshold(*v[1])


def _settings() -> Tuple[Setting, ...]:
    found = [  # put back in this order: modes first (a mode left on the stack intercepts the setters below)
        Setting("torch default device", _default_device, _set_default_device, str),  # pops the mode it pushed
        Setting(
            "torch function modes",
            torch._C._len_torch_function_stack,
            lambda n: _pop_modes(n, torch._C._len_torch_function_stack, torch._C._pop_torch_function_stack),
            str,
        ),
        Setting(
            "torch dispatch modes",
            torch._C._len_torch_dispatch_stack,
            lambda n: _pop_modes(n, torch._C._len_torch_dispatch_stack, _pop_dispatch_mode),
            str,
        ),
        Setting("torch threads", torch.get_num_threads, torch.set_num_threads, str),
        Setting("torch default dtype", torch.get_default_dtype, torch.set_default_dtype, str),
        Setting("grad mode", torch.is_grad_enabled, torch._C._set_grad_enabled, _on_off),
        Setting(
            "anomaly detection",
            lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
            lambda v: torch.set_anomaly_enabled(*v),
            _pair("anomaly", "check_nan"),
        ),
        Setting(
            "deterministic algorithms",
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]),
            _pair("deterministic", "warn_only"),
        ),
        Setting(
            "float32 matmul precision", torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, str
        ),
        Setting("torch warn_always", torch.is_warn_always_enabled, torch.set_warn_always, _on_off),
        Setting(
            "autograd multithreading",
            torch._C._is_multithreading_enabled,
            torch._C._set_multithreading_enabled,
            _on_off,
        ),
        *[
            Setting(
                f"autocast on {d}",
                lambda d=d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)),
                lambda v, d=d: (torch.set_autocast_enabled(d, v[0]), torch.set_autocast_dtype(d, v[1])),
                lambda v: f"{_on_off(v[0])} ({v[1]})",
            )
            for d in ("cpu", "cuda")
        ],
        *[f for f in map(_flag, BACKEND_FLAGS) if f is not None],
        Setting("global module hooks", _hook_tables, _set_hook_tables, _show_hooks),
        Setting("working folder", _cwd, _chdir),
        Setting("signal handlers", _handlers, _set_handlers, _show_handlers, main_thread=True),
        Setting("alarm timer", _alarm_armed, _disarm, lambda v: "armed" if v else "off", main_thread=True),
        Setting("standard streams", _streams, _set_streams, _show_streams),
        Setting("garbage collector", _gc_state, _set_gc, lambda v: f"{_on_off(v[0])}, thresholds {v[1]}"),
        Setting("thread switch interval", sys.getswitchinterval, sys.setswitchinterval, lambda v: f"{v:g} s"),
        Setting("trace/profile function", _trace, _set_trace, lambda v: "none" if v == (None, None) else "set"),
        Setting("excepthook", lambda: sys.excepthook, lambda v: setattr(sys, "excepthook", v), _handler_name),
        Setting("CPU affinity", _affinity, _set_affinity, _cpus),
        Setting("resource limits", _rlimits, _set_rlimits, lambda v: ", ".join(f"{k} {l}" for k, l in v.items())),
        Setting("umask", _umask, os.umask, oct),
    ]
    return tuple(found)


SETTINGS = _settings()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def snapshot() -> Dict[str, Any]:
    """Every setting of :data:`SETTINGS` that can be read here (signals and timers: main thread only)."""
    main = _main_thread()
    _remember_fds()
    out = {}
    for s in SETTINGS:
        if s.main_thread and not main:
            continue
        with contextlib.suppress(Exception):
            out[s.name] = s.read()
    return out


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(a[k] is not b[k] and a[k] != b[k] for k in a)
    return a is not b and a != b


def describe(setting: Setting, before: Any, after: Any) -> str:
    """'torch threads 2 -> 1', or what changed in a table of many (handlers, streams, hooks, variables)."""
    if setting.name == "signal handlers":
        changed = {
            s: (before.get(s), after.get(s)) for s in set(before) | set(after) if before.get(s) is not after.get(s)
        }
        return "signal handlers: " + ", ".join(
            f"{signal.Signals(s).name} {_handler_name(a)} -> {_handler_name(b)}"
            for s, (a, b) in sorted(changed.items())
        )
    if setting.name == "standard streams":
        parts = [
            f"sys.{n} {'closed' if after[n][1] else 'replaced'}"
            for n in STREAMS
            if after[n][0] is not before[n][0] or after[n][1] != before[n][1]
        ]
        return "standard streams: " + ", ".join(parts)
    return f"{setting.name} {setting.show(before)} -> {setting.show(after)}"


class Watch:
    """A snapshot of :data:`SETTINGS`; :meth:`check` puts back whatever differs now and says what it was."""

    def __init__(self) -> None:
        self.before = snapshot()
        self.changes: List[str] = []  # every change seen by check(), oldest first

    def check(self) -> List[str]:
        """Compare with the snapshot, put back every setting that changed; returns one line per change (a
        setting that cannot be put back says so)."""
        return [text for _, text in self.check_items()]

    def check_items(self) -> List[Tuple[str, str]]:
        """:meth:`check` as (setting name, line) pairs."""
        _remember_fds()
        main = _main_thread()
        found = []
        for s in SETTINGS:
            if s.name not in self.before or (s.main_thread and not main):
                continue
            try:  # read now, after the settings listed before it were put back: popping a mode left on the stack
                now = s.read()  # puts back what it intercepted, float32 matmul precision puts back allow_tf32
            except Exception:
                continue
            if not _differs(self.before[s.name], now):
                continue
            text = describe(s, self.before[s.name], now)
            try:
                s.write(self.before[s.name])
            except Exception as exc:  # an interop thread count set once for good, a hard limit lowered
                text += f" (could not be put back: {type(exc).__name__}: {str(exc).strip()[:80]})"
            with contextlib.suppress(Exception):  # the state now (a reopened stream, what could not be put back)
                self.before[s.name] = s.read()
            found.append((s.name, text))
        self.changes += [text for _, text in found]
        return found


def blame(changes: List[str], who: str) -> str:
    """The one line a unit of work that changed process state fails with."""
    return (
        f"{who} changed process-wide state: {'; '.join(changes)}; put back, so later rows are unaffected; fix: "
        "leave global settings alone, or scope them inside forward (`with torch.no_grad():`)"
    )


@contextlib.contextmanager
def unchanged(who: str) -> Iterator[Watch]:
    """Run the block; when it changed process-wide state, put it back and raise :class:`StateChanged` naming
    ``who`` (an error the block raised itself wins: the state is put back all the same)."""
    watch = Watch()
    try:
        yield watch
    finally:  # other cells ran in this process meanwhile: their changes are not this block's (see alone)
        changes = [] if _crowded() else watch.check()
    if changes:
        raise StateChanged(blame(changes, who))


class _Unit:
    overlapped = False  # another unit ran in this process at some time while this one did


_active: List[_Unit] = []
_active_lock = threading.Lock()
_local = threading.local()  # .unit: the unit of work this thread runs (alone())


@contextlib.contextmanager
def alone() -> Iterator[_Unit]:
    """Count the block among the units of work running in this process. Process-wide state belongs to the whole
    process: when two cells overlap (a Dask worker with several threads), a change cannot be told apart from
    the other cell's own, so ``unit.overlapped`` says a Watch over the block must neither blame nor put back."""
    unit = _Unit()
    with _active_lock:
        if _active:
            unit.overlapped = True
            for other in _active:
                other.overlapped = True
        _active.append(unit)
    outer, _local.unit = getattr(_local, "unit", None), unit
    try:
        yield unit
    finally:
        _local.unit = outer
        with _active_lock:
            _active.remove(unit)


def _crowded() -> bool:
    """Whether this thread's unit of work has overlapped another (outside any unit: whether any runs now)."""
    unit = getattr(_local, "unit", None)
    return unit.overlapped if unit is not None else bool(_active)


@contextlib.contextmanager
def pinned(dtype: str = "float32") -> Iterator[None]:
    """The settings a cell is measured under, whatever the caller's session set: torch's default dtype is the
    cell's (its record says so) and grad mode is on (training metrics need it; counts scope their own
    ``no_grad``). The caller's values come back afterwards."""
    old_dtype, old_grad = torch.get_default_dtype(), torch.is_grad_enabled()
    torch.set_default_dtype(getattr(torch, dtype))
    torch._C._set_grad_enabled(True)
    try:
        yield
    finally:
        torch.set_default_dtype(old_dtype)
        torch._C._set_grad_enabled(old_grad)
