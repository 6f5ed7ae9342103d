"""Name -> factory registries fed by Python entry points (built-ins use the same path).

A factory is any callable ``factory(channels: int, **options) -> nn.Module`` whose module
keeps the ``(N, C, H, W)`` shape. Built-in modules are declared in attnbench's own
``pyproject.toml`` under the ``attnbench.modules`` group, exactly like third-party plugins,
so there is one discovery path. ``register`` adds names in-process (notebooks, tests).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from importlib.metadata import entry_points
from typing import Callable, Dict, List, Optional, Tuple

from .core.baselines import BASELINE_NAMES, is_baseline  # noqa: F401 (imported from here too)
from .errors import UnknownNameError

MODULE_GROUP = "attnbench.modules"
DATASET_GROUP = "attnbench.datasets"


class PluginWarning(UserWarning):
    """A plugin entry point failed to load; the others are unaffected."""


class Registry:
    """One entry-point group, discovered once per process from package metadata; a plugin's package is
    imported only when one of its names is used (``get``), so listing names or starting a command never
    imports every installed plugin. An entry that fails to import warns once and is unknown from then on.

    Names are never taken over silently: attnbench's own entries keep their names; a plugin whose
    name collides with a built-in, or two plugins with one name, are listed under the qualified
    name ``<package>:<name>`` with one warning per name naming every package that claims it. A plugin's
    import is contained: whatever it raises (``SystemExit`` included) becomes a warning, and what it prints
    goes to stderr, never into a table on stdout. ``provider(name)`` says which package (and version) a name
    came from (from metadata: no import).
    """

    def __init__(self, group: str, kind: str, owner: str = "attnbench"):
        self.group, self.kind, self.owner = group, kind, owner
        self._entries: Optional[Dict[str, object]] = None  # public name -> entry point (metadata only)
        self._loaded: Dict[str, Callable] = {}  # public name -> factory, once imported
        self._local: Dict[str, Callable] = {}
        self._providers: Dict[str, Tuple[str, str]] = {}
        self.broken: Dict[str, str] = {}

    def _warn(self, message: str) -> None:
        warnings.warn(f"attnbench: {message}", PluginWarning, stacklevel=4)

    def _discover(self) -> Dict[str, object]:
        """Public name -> entry point, from installed packages' metadata; nothing is imported."""
        if self._entries is None:
            claims: Dict[str, List] = {}
            seen = set()
            for ep in sorted(entry_points(group=self.group), key=lambda e: (e.name, _dist_name(e))):
                if (ep.name, ep.value, _dist_name(ep)) in seen:
                    continue  # the same package seen twice on sys.path (editable + site)
                seen.add((ep.name, ep.value, _dist_name(ep)))
                claims.setdefault(ep.name, []).append(ep)
            found: Dict[str, object] = {}
            for name, eps in claims.items():
                own = [e for e in eps if _dist_name(e) == self.owner]
                winner = own[0] if own else (eps[0] if len(eps) == 1 else None)
                renamed = [e for e in eps if e is not winner]
                if renamed:  # one warning per contested name, naming every package and where each went
                    listed = ", ".join(f"{_dist_name(e)}:{name}" for e in renamed)
                    keeps = f"{_dist_name(winner)} keeps {name!r}; " if winner is not None else ""
                    self._warn(
                        f"{self.kind} name {name!r} is registered by "
                        f"{', '.join(sorted({_dist_name(e) for e in eps}))}: {keeps}listed as {listed} "
                        "(rename the entry point to avoid this)"
                    )
                for ep in eps:
                    public = name if ep is winner else f"{_dist_name(ep)}:{name}"
                    found[public] = ep
                    self._providers[public] = (_dist_name(ep), _dist_version(ep))
            self._entries = found
        return self._entries

    def _load_one(self, public: str) -> Optional[Callable]:
        """Import one entry point (once); any failure (SystemExit too) is a warning, prints go to stderr."""
        if public in self._loaded:
            return self._loaded[public]
        if public in self.broken:
            return None
        ep = self._discover()[public]
        from .guard.cell import contained
        from .guard.process_state import unchanged

        try:  # an import that changes process-wide state (threads, dtype, hooks, cwd, signals) is put back and refused
            with unchanged(f"importing {ep.value}"), contextlib.redirect_stdout(sys.stderr):
                factory = ep.load()
        except BaseException as exc:  # SystemExit, a KeyboardInterrupt no signal raised: must not take the others down
            if not contained(exc):
                raise
            msg = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:300]
            self.broken[public] = msg
            self._warn(
                f"skipped {self.kind} plugin {public!r} ({ep.value}, package {_dist_name(ep)}): "
                f"{msg}; fix or uninstall that package"
            )
            return None
        self._loaded[public] = factory
        return factory

    def load_all(self) -> Dict[str, Callable]:
        """Import every entry (``attnbench list modules --details``): name -> factory, broken ones left out."""
        return {n: f for n in self._discover() if (f := self._load_one(n)) is not None}

    def reload(self) -> None:
        """Forget what was discovered (after installing a plugin in-process)."""
        self._entries = None
        self._loaded = {}
        self._providers = {}
        self.broken = {}

    def names(self) -> List[str]:
        """Every name: entry points (from metadata, not imported; one that then fails to import is in
        ``broken`` and left out) and in-process registrations."""
        return sorted((set(self._discover()) - set(self.broken)) | set(self._local))

    def entry(self, name: str) -> str:
        """``module:attr`` an entry-point name points at ('' for in-process and unknown names): no import."""
        ep = None if name in self._local else self._discover().get(name)
        return getattr(ep, "value", "") if ep is not None else ""

    def get(self, name: str) -> Callable:
        if name in self._local:
            return self._local[name]
        table = self._discover()
        if name in table and name not in self.broken:
            factory = self._load_one(name)
            if factory is not None:
                return factory
        if name in self.broken:
            raise UnknownNameError(self.kind, name, [], f"its plugin failed to import: {self.broken[name]}")
        qualified = sorted(n for n in table if n.endswith(f":{name}") and not n.startswith("timm:"))
        if qualified:
            raise UnknownNameError(
                self.kind, name, qualified, f"registered by several packages: name one of {', '.join(qualified)}"
            )
        raise UnknownNameError(self.kind, name, self.names(), f"see `attnbench list {self.kind}s`")

    def provider(self, name: str) -> Tuple[str, str]:
        """(package, version) that registered ``name``; in-process registrations are ``("<in-process>", "")``."""
        if name in self._local:
            return ("<in-process>", "")
        self._discover()
        return self._providers.get(name, ("?", ""))

    def plugin_packages(self) -> Dict[str, str]:
        """Every third-party package that registered an entry here: name -> version (from metadata)."""
        self._discover()
        return {d: v for d, v in sorted(set(self._providers.values())) if d != self.owner}

    def register(self, name: str, factory: Callable, override: bool = False) -> Callable:
        if not override and name not in self._local and name in self._discover() and name not in self.broken:
            existing = self._load_one(name)  # the same factory again is not a clash: import to compare
        else:
            existing = self._local.get(name)
        if existing is not None and existing is not factory and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
        self._local[name] = factory
        return factory

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


def _dist_version(ep) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "version", None) or ""


MODULES = Registry(MODULE_GROUP, "module")
DATASETS = Registry(DATASET_GROUP, "dataset")


def list_modules() -> List[str]:
    """Names of all attention modules: built-ins, installed plugins, in-process registrations."""
    return MODULES.names()


def get_module(name: str) -> Callable:
    """The factory registered under ``name``; raises UnknownNameError with close matches."""
    return MODULES.get(name)


def register(name: str, override: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: ``@attnbench.register("my_gate")`` on a class or ``factory(channels, **kw)``."""

    def deco(factory: Callable) -> Callable:
        return MODULES.register(name, factory, override=override)

    return deco
