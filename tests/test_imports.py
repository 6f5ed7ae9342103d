"""No import circles among attnbench's modules -- function-level (lazy) imports included, since a lazy import
is how a circle usually hides."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "attnbench"


def _modules():
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph():
    """module -> attnbench modules it imports anywhere in its file."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in candidates if c in mods and c != name)
        graph[name] = deps
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "attnbench.attach.placement" in graph["attnbench.attach.backbone"]  # it reads real edges


def test_no_import_circles():
    assert cycles(import_graph()) == []


# The layers, lowest first: a module may import (at the top or lazily) only modules of its own rank or lower.
# Data flows one way -- suite -> cells -> measurements -> records -> tables -- and the report layer reads
# records only, so it sits just above them and never needs torch. Two leaves of higher packages are rank 0
# on purpose: the suite's data model (Point, Cell) and the latency settings, read by every layer.
RANKS = {
    "attnbench.errors": 0,
    "attnbench.core": 0,
    "attnbench.suite.model": 0,
    "attnbench.measures.timing.settings": 0,
    "attnbench.records": 1,
    "attnbench.report": 2,
    "attnbench.registry": 2,
    "attnbench.guard": 2,
    "attnbench.modules": 3,
    "attnbench.attach": 4,
    "attnbench.measures": 5,
    "attnbench.train": 5,
    "attnbench.check": 6,
    "attnbench.suite": 6,
    "attnbench.harness": 7,
    "attnbench": 8,  # the package's lazy exports, api, cli, validate
}
TORCH_FREE = (
    "attnbench.errors",
    "attnbench.core",
    "attnbench.suite.model",
    "attnbench.measures.timing.settings",
    "attnbench.records",
    "attnbench.report",
    "attnbench.registry",
)


def rank(module: str) -> int:
    return RANKS[max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)]


def layer_violations(graph):
    return [
        f"{a} (rank {rank(a)}) imports {b} (rank {rank(b)})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if rank(b) > rank(a)
    ]


def test_the_layer_rule_catches_an_upward_import():
    assert layer_violations({"attnbench.report.tables": {"attnbench.harness.runner"}}) == [
        "attnbench.report.tables (rank 2) imports attnbench.harness.runner (rank 7)"
    ]
    assert layer_violations({"attnbench.harness.runner": {"attnbench.report.tables"}}) == []


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(import_graph()) == []


def test_the_torch_free_layers_import_no_torch_anywhere():
    """Not at the top and not lazily: the report layer, records, settings and the suite's model never reach torch."""
    offenders = []
    for name, path in _modules().items():
        if not any(name == p or name.startswith(p + ".") for p in TORCH_FREE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0] in ("torch", "timm", "fvcore", "torchvision")]
    assert offenders == []


def test_every_package_folder_is_installed():
    """pyproject lists its packages by name: a new folder missing there would be absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)


def test_report_and_its_command_load_no_torch(tmp_path):
    """`import attnbench.report` and `attnbench report STORE` (every table, CSV and plot of a real store) finish
    without torch in sys.modules: reading results costs no torch import (about 2.7 s)."""
    import shutil
    import subprocess
    import sys

    store = tmp_path / "overhead.jsonl"
    shutil.copy(PACKAGE.parent / "results" / "overhead.jsonl", store)
    probe = (
        "import atexit, sys; atexit.register(lambda: print('torch loaded' if 'torch' in sys.modules else "
        "'no torch', flush=True)); "
    )
    p = subprocess.run([sys.executable, "-c", probe + "import attnbench.report"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "no torch", p.stderr
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            probe + "from attnbench.cli import main; main(sys.argv[1:])",
            "report",
            str(store),
            "--out",
            str(tmp_path / "tables"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "no torch"
    assert (tmp_path / "tables" / "overhead.md").exists()


def test_no_subpackage_shadows_a_public_name():
    """`import attnbench.x.y` sets attribute `x` on the package: a subpackage named like a lazy export (`run`,
    `load`, `build`, ...) would replace the function by the module for everyone who imported it first."""
    import attnbench

    children = {
        p.stem if p.suffix == ".py" else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert not children & set(attnbench.__all__)
