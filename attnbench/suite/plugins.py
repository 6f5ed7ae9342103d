"""Plugins from the command line: what is installed (``attnbench list modules --details``) and a plugin in a
suite run without writing YAML (``attnbench run --suite overhead --add-module my_gate``).

Listing names imports nothing (the registry reads entry-point metadata); ``--details`` imports every entry to
say what it is, and names the ones that fail to import with their error.
"""

from __future__ import annotations

import inspect
from typing import List

from ..errors import UsageError


def module_details() -> List[str]:
    """One line per registered module: name, package and version, entry point, and the factory's signature --
    or why its plugin failed to import. Imports every plugin package."""
    from ..attach.contract import factory_name
    from ..registry import MODULES

    names = MODULES.names()  # from metadata, before any import: the broken ones too
    MODULES.load_all()
    lines = []
    for name in names:
        package, version = MODULES.provider(name)
        where = f"{package} {version}".strip() + "  " + (MODULES.entry(name) or "registered in-process")
        if name in MODULES.broken:
            lines.append(f"{name}  {where}  failed to import: {MODULES.broken[name]}")
            continue
        factory = MODULES.get(name)
        try:
            signature = str(inspect.signature(factory))
        except (TypeError, ValueError):
            signature = "(...)"
        lines.append(f"{name}  {where}  {factory_name(factory)}{signature}")
    return lines


def with_added_modules(suite: str, names: List[str]):
    """The suite ``suite`` (a name from suites/ or a .yaml path) with the registered modules ``names`` appended
    to its ``modules`` (each with the suite's ``module_options`` for it, if any), validated as if the file listed
    them: a plugin gets into a table without a YAML file of its own."""
    from .load import load_suite, read_yaml, resolve_suite

    if not names:
        return load_suite(suite)
    path = resolve_suite(suite)
    try:
        data = read_yaml(path.read_bytes().decode("utf-8"), str(path))
    except (OSError, UnicodeDecodeError):
        return load_suite(suite)  # load_suite says what is wrong with the file
    if not isinstance(data, dict) or not isinstance(data.get("modules"), list):
        return load_suite(suite)
    listed = {
        m if isinstance(m, str) else (m.get("name") or m.get("module"))
        for m in data["modules"]
        if isinstance(m, (str, dict))
    }
    for i, name in enumerate(names):
        if name in listed or name in names[:i]:
            raise UsageError(
                f"--add-module {name}: suite {path.stem!r} already lists it; drop --add-module "
                f"(--module {name} runs it alone)"
            )
    return load_suite(suite, overrides={"modules": [*data["modules"], *names]})
