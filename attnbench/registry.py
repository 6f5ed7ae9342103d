"""Name -> factory registries fed by Python entry points (built-ins use the same path).

A factory is any callable ``factory(channels: int, **options) -> nn.Module`` whose module
keeps the ``(N, C, H, W)`` shape. Built-in modules are declared in attnbench's own
``pyproject.toml`` under the ``attnbench.modules`` group, exactly like third-party plugins,
so there is one discovery path. ``register`` adds names in-process (notebooks, tests).
"""
from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable, Dict, List, Optional

from .errors import UnknownNameError

MODULE_GROUP = "attnbench.modules"
DATASET_GROUP = "attnbench.datasets"

# Names that mean "no attention module": the plain backbone.
BASELINE_NAMES = ("none", "baseline")


class PluginWarning(UserWarning):
    """A plugin entry point failed to load; the others are unaffected."""


class Registry:
    """One entry-point group, loaded once per process; broken entries warn once and are skipped."""

    def __init__(self, group: str, kind: str):
        self.group, self.kind = group, kind
        self._loaded: Optional[Dict[str, Callable]] = None
        self._local: Dict[str, Callable] = {}
        self.broken: Dict[str, str] = {}

    def _load(self) -> Dict[str, Callable]:
        if self._loaded is None:
            found: Dict[str, Callable] = {}
            for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
                if ep.name in found:
                    continue  # the same package seen twice on sys.path (editable + site)
                try:
                    found[ep.name] = ep.load()
                except Exception as exc:  # any failure in a plugin's import must not break the others
                    dist = getattr(getattr(ep, "dist", None), "name", "?")
                    msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    self.broken[ep.name] = msg
                    warnings.warn(
                        f"attnbench: skipped {self.kind} plugin {ep.name!r} ({ep.value}, package {dist}): "
                        f"{msg}; fix or uninstall that package",
                        PluginWarning,
                        stacklevel=3,
                    )
            self._loaded = found
        return self._loaded

    def reload(self) -> None:
        """Forget what was discovered (after installing a plugin in-process)."""
        self._loaded = None
        self.broken = {}

    def names(self) -> List[str]:
        return sorted(set(self._load()) | set(self._local))

    def get(self, name: str) -> Callable:
        if name in self._local:
            return self._local[name]
        table = self._load()
        if name in table:
            return table[name]
        if name in self.broken:
            raise UnknownNameError(self.kind, name, [], f"its plugin failed to import: {self.broken[name]}")
        raise UnknownNameError(self.kind, name, self.names(), f"see `attnbench list {self.kind}s`")

    def register(self, name: str, factory: Callable, override: bool = False) -> Callable:
        existing = self._local.get(name) or self._load().get(name)
        if existing is not None and existing is not factory and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
        self._local[name] = factory
        return factory

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)


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


def is_baseline(name: Optional[str]) -> bool:
    return name is None or str(name).lower() in BASELINE_NAMES
