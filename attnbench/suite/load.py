"""Finding and reading suite files: shipped suites, names or paths, YAML read with limits, and the suite's
identity (origin relative to where it was found, and a digest of its parsed content)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..core.settings import short
from ..errors import SuiteError, UnknownNameError, UsageError
from .model import MAX_SUITE_BYTES, MAX_YAML_BYTES, MAX_YAML_NODES, Suite, _name, suite_origin
from .parse import parse_suite


def suite_dirs() -> List[Path]:
    """Where suite names are looked up: ./suites first, then the suites shipped with attnbench."""
    dirs = [Path.cwd() / "suites"]
    try:
        dirs.append(Path(str(resources.files("attnbench.suites"))))
    except (ModuleNotFoundError, TypeError):
        pass
    return [d for d in dirs if d.is_dir()]


def list_suites() -> List[str]:
    return sorted({p.stem for d in suite_dirs() for p in d.glob("*.yaml")})


def resolve_suite(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"suite file {name_or_path} does not exist; give a path or one of {list_suites()}")
        return path
    for d in suite_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise UnknownNameError(
        "suite", name_or_path, list_suites(), "see `attnbench list suites`, or give a path to a .yaml file"
    )


def load_suite(name_or_path: str, check_names: bool = True, overrides: Optional[Dict[str, Any]] = None) -> Suite:
    """A suite file by name or path; ``overrides`` replace its top-level fields before validation
    (``attnbench.run(suite, metrics=[...])``)."""
    path = resolve_suite(name_or_path)
    by_name = not (Path(name_or_path).suffix in (".yaml", ".yml") or Path(name_or_path).exists())
    source = str(path)
    size = path.stat().st_size
    if size > MAX_SUITE_BYTES:
        raise SuiteError(source, "<file>", f"is {size:,} bytes; a suite file is at most {MAX_SUITE_BYTES:,} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(source, "<file>", f"is not UTF-8 text (byte {exc.start}); give a YAML suite file")
    data = read_yaml(text, source)
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    suite = parse_suite(data, source, default_name=path.stem, check_names=check_names)
    suite.origin = suite_origin(path, by_name)
    return suite


def read_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with a bound on what the document expands to, in nodes and in bytes of text
    (aliases counted every time they are used), so an alias bomb is refused before anything walks it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SuiteError(source, "<file>", f"not valid YAML{where}: {short(getattr(exc, 'problem', None) or exc)}")
    except RecursionError:
        raise SuiteError(source, "<file>", "is nested too deeply; a suite is a flat mapping of fields")
    finally:
        loader.dispose()


def _expanded_size(node, source: str, memo: Dict[int, Tuple[int, int]], active: set) -> Tuple[int, int]:
    """(nodes, bytes of scalar text) the document holds once every alias is expanded (memoised on the
    shared nodes, so a bomb is sized without being walked)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        raise SuiteError(source, "<file>", "holds a recursive YAML alias; write the value out")
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node, source)
    nodes, size = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
    children = (
        node.value
        if isinstance(node, yaml.SequenceNode)
        else [n for pair in node.value for n in pair]
        if isinstance(node, yaml.MappingNode)
        else []
    )
    for child in children:
        n, b = _expanded_size(child, source, memo, active)
        nodes, size = nodes + n, size + b
    active.discard(id(node))
    memo[id(node)] = (nodes, size)
    if nodes > MAX_YAML_NODES:
        raise SuiteError(
            source,
            "<file>",
            f"expands to more than {MAX_YAML_NODES:,} YAML nodes (alias expansion); a suite is a few dozen fields",
        )
    if size > MAX_YAML_BYTES:
        raise SuiteError(
            source,
            "<file>",
            f"expands to more than {MAX_YAML_BYTES:,} bytes of text (alias expansion); "
            "a suite is a few dozen short fields",
        )
    return nodes, size


def _no_duplicate_keys(node: "yaml.MappingNode", source: str) -> None:
    """YAML keeps the last of two equal keys without a word (``modules:`` twice drops the first list): refused."""
    seen: Dict[Tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            raise SuiteError(
                source,
                _name(key.value),
                f"is given twice (lines {seen[key.tag, key.value]} and {line}); "
                "YAML would keep only the last one: keep one",
            )
        seen[key.tag, key.value] = line
