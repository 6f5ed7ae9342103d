"""Settings dataclasses are the one source of truth for suite keys, their defaults and their checks.

A field a suite may set is declared with ``suite_field(default, rule)``; ``suite_rules(cls)`` gives
suite validation the keys and checks, so a key list never has to be repeated beside the dataclass.
A rule is ``(check, problem)``: ``check(value) -> bool`` and the text shown when it fails.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import reprlib
from typing import Any, Callable, Dict, Optional, Tuple

Rule = Tuple[Callable[[Any], bool], str]


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite_number(v) -> bool:
    """A real number that is not a bool, NaN or infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE_INT: Rule = (lambda v: _int(v) and v >= 1, "must be an integer >= 1")
NONNEGATIVE_INT: Rule = (lambda v: _int(v) and v >= 0, "must be an integer >= 0")
POSITIVE_NUMBER: Rule = (lambda v: is_finite_number(v) and v > 0, "must be a finite number > 0")
NONNEGATIVE_NUMBER: Rule = (lambda v: is_finite_number(v) and v >= 0, "must be a finite number >= 0")
BOOLEAN: Rule = (lambda v: isinstance(v, bool), "must be true or false")


def choice(*options) -> Rule:
    return (lambda v: v in options, f"must be one of {', '.join(map(str, options))}")


def optional(rule: Rule) -> Rule:
    check, problem = rule
    return (lambda v: v is None or check(v), f"{problem} (or null)")


def suite_field(default: Any, rule: Rule, **kwargs) -> Any:
    """A dataclass field a suite file may set, with the check suite validation applies to it."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"suite": rule}, **kwargs)
    return dataclasses.field(default=default, metadata={"suite": rule}, **kwargs)


def suite_rules(cls) -> Dict[str, Rule]:
    """The suite-settable fields of a settings dataclass and their checks, in declaration order."""
    return {f.name: f.metadata["suite"] for f in dataclasses.fields(cls) if "suite" in f.metadata}


def short(value: Any, limit: int = 80) -> str:
    """A bounded repr for error messages: never expands a huge (or alias-bombed) value."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 40, 40
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def signature_problem(fn: Callable, options: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the first option whose value cannot be what ``fn``'s signature implies, or None.

    Read from each parameter's default, so it holds for any plugin without a list of option names: an
    int default is a count, size or ratio (``reduction=16``, ``kernel_size=7``, ``blocks=1``), so the value
    must be a number of the same sign -- positive for a positive default, >= 0 where 0 means "choose
    automatically" -- and an int where the parameter is annotated ``int`` (or not annotated); a bool
    default needs true or false. Parameters without a default, or with a float, None or text default,
    are left to the constructor."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature (C extension)
        return None
    for name, value in options.items():
        p = params.get(name)
        if p is None or p.default is inspect.Parameter.empty:
            continue
        default = p.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                return f"option {name!r} must be true or false (its default is {default}), got {short(value)}"
        elif isinstance(default, int):
            whole = p.annotation in (int, "int") or p.annotation is inspect.Parameter.empty
            kind = "an integer" if whole else "a number"
            ok_type = _int(value) if whole else is_finite_number(value)
            if default > 0 and not (ok_type and value > 0):
                return f"option {name!r} must be {kind} > 0 (its default is {default}), got {short(value)}"
            if default == 0 and not (ok_type and value >= 0):
                return f"option {name!r} must be {kind} >= 0 (its default 0 means automatic), got {short(value)}"
    return None
