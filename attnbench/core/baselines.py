"""The names that mean "no attention module added" -- one place, torch-free, for every layer that must tell a
baseline row from a module row (suite, attach, report)."""

from __future__ import annotations

from typing import Optional

BASELINE_NAMES = ("none", "baseline")  # the plain backbone
NATIVE = "native"  # timm's model as built, its own attention included


def is_baseline(name: Optional[str]) -> bool:
    return name is None or str(name).lower() in BASELINE_NAMES
