"""The suite's data model: Suite, its variants and points, and the Cell a suite expands into.

A leaf of the package (no torch, no YAML): the report layer reads Point from here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.baselines import NATIVE, is_baseline
from ..core.metrics import ACCURACY, RUNTIMES, SUITE_METRICS, spec
from ..core.settings import short

TOP_KEYS = {
    "name": "suite name (string)",
    "description": "free text",
    "kind": "overhead (default) or accuracy",
    "backbones": "list of timm model names",
    "backbone_options": "keyword arguments for timm.create_model",
    "modules": "list of registry names ('none' = baseline) or {name, module, ...options} mappings",
    "module_options": "mapping module name -> options",
    "input_size": "int, 'HxW' or [height, width]; a list of them is a sweep (one cell per point)",
    "batch_size": "positive int, or a list of them (a sweep)",
    "runtime": f"one of {', '.join(RUNTIMES)}, or a list of them (an axis; default eager)",
    "sweeps": "list of mappings of input_size / batch_size / runtime: each is a grid, the suite's points are their union",
    "metrics": f"subset of {list(SUITE_METRICS)}",
    "device": "CUDA device for the *_gpu metrics (default cuda)",
    "dtype": "float32",
    "latency": "timing settings: threads, warmup, rounds, min_time, min_iters, unstable_threshold, amp, channels_last "
    "(compile: true is read as runtime: compile)",
    "dataset": "dataset settings (accuracy suites)",
    "training": "training settings (accuracy suites)",
    "seeds": "list of ints (accuracy suites)",
    "timeout": "seconds a cell may run before it is failed as Timeout (default 1800; accuracy cells 86400)",
}


MAX_NAME = 100  # characters of a suite name: it names files, and a file name has at most 255 bytes


MAX_SUITE_BYTES = 1 << 20  # a suite file is a few hundred bytes; refuse anything near a megabyte


MAX_YAML_NODES = 20_000  # after alias expansion: anchors are fine, alias bombs are not


MAX_YAML_BYTES = 1 << 20  # text after alias expansion: a short aliased string repeated a million times is a bomb too


MAX_POINTS = 1_000  # (input_size, batch_size, runtime) points, counted before any is made


MAX_CELLS = 20_000  # cells of one suite (a zoo of every module on every family is a few hundred)


MAX_TIMED_CELLS = 2_000  # timing cells: each takes seconds to minutes (rounds x min_time per variant)


DEFAULT_TIMEOUT_S = 1800.0


DEFAULT_ACCURACY_TIMEOUT_S = 86400.0


def _name(key: Any) -> str:
    """A mapping key as a field name in an error: itself when it is a short string, else bounded."""
    return key if isinstance(key, str) and len(key) <= 40 else short(key, 40)


@dataclass(frozen=True)
class Variant:
    """A module with its options under a unique label ('se', 'se-r8', 'none')."""

    label: str
    module: str  # registry name, or 'none'
    options: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)  # accuracy suites: overrides of the suite's training
    auto: bool = False  # added by attnbench (the 'native' row), planned only where the backbone has native attention


AXES = ("input_size", "batch_size", "runtime")


@dataclass(frozen=True)
class Point:
    """One setting of the suite's axes: where a timing is taken (counts use the axes they depend on)."""

    input_size: Tuple[int, int] = (224, 224)
    batch_size: int = 1
    runtime: str = "eager"

    @property
    def label(self) -> str:
        return self.axes_label(AXES)

    def axes_label(self, axes) -> str:
        """'224x224 b8 compile', keeping only the given axes (those a metric depends on)."""
        parts = {
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "batch_size": f"b{self.batch_size}",
            "runtime": self.runtime,
        }
        return " ".join(v for k, v in parts.items() if k in axes)

    def project(self, metric: str, base: "Point") -> Optional["Point"]:
        """This point as a cell of ``metric`` sees it: axes the metric does not depend on take the
        suite's base value; None when the metric cannot run under this point's runtime."""
        s = spec(metric)
        if "runtime" in s.axes and self.runtime not in s.runtimes:
            return None
        return Point(
            self.input_size if "input_size" in s.axes else base.input_size,
            self.batch_size if "batch_size" in s.axes else base.batch_size,
            self.runtime if "runtime" in s.axes else "eager",
        )


@dataclass
class Suite:
    name: str
    source: str
    backbones: List[str]
    variants: List[Variant]
    metrics: List[str]
    input_size: Tuple[int, int] = (224, 224)
    batch_size: int = 1
    device: str = "cuda"  # used by the *_gpu metrics; everything else runs on the CPU
    dtype: str = "float32"
    kind: str = "overhead"
    description: str = ""
    backbone_options: Dict[str, Any] = field(default_factory=dict)
    latency: Dict[str, Any] = field(default_factory=dict)
    dataset: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=list)
    timeout: Optional[float] = None  # seconds per cell; None = the kind's default
    points: List[Point] = field(
        default_factory=list
    )  # every (input_size, batch_size, runtime) measured; [] = the base only
    # --backbone / --module / --metric: run a subset; table positions stay those of the whole suite
    only_backbones: List[str] = field(default_factory=list)
    only_modules: List[str] = field(default_factory=list)
    only_metrics: List[str] = field(default_factory=list)
    origin: str = ""  # where the file was found, relative (see identity); "" for a suite given as data
    digest: str = ""  # SHA-256 (16 hex digits) of the parsed suite document: the suite's content

    @property
    def base(self) -> Point:
        return Point((self.input_size[0], self.input_size[1]), self.batch_size)

    def all_points(self) -> List[Point]:
        return self.points or [self.base]

    def metric_points(self, metric: str) -> List[Point]:
        """The distinct points a metric's cells are planned at, in the suite's order."""
        return list(
            dict.fromkeys(q for q in (p.project(metric, self.base) for p in self.all_points()) if q is not None)
        )

    @property
    def identity(self) -> str:
        """Where this suite was found, free of the machine's own paths (its records carry it as ``source``):
        ``suites/<file>`` for a suite looked up by name or a file in a folder named ``suites``, a path
        relative to the working folder for a file under it, else the file's name. With ``digest`` (its
        content) it tells two suite files with one name apart in any clone, folder or machine."""
        return self.origin

    def selected(self, backbone: str, variant: "Variant", metric: Optional[str] = None) -> bool:
        return (
            (not self.only_backbones or backbone in self.only_backbones)
            and (not self.only_modules or variant.label in self.only_modules)
            and (metric is None or not self.only_metrics or metric in self.only_metrics)
        )


@dataclass(frozen=True)
class Cell:
    suite: str
    backbone: str
    variant: Variant
    metric: str
    position: Tuple[int, int]  # (backbone index, variant index) in the suite, for table order
    input_size: Tuple[int, int]
    batch_size: int
    device: str
    dtype: str
    backbone_options: Dict[str, Any] = field(default_factory=dict)
    latency: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    dataset: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_S  # not part of the key: it bounds a run, it does not change a result
    runtime: str = "eager"
    swept: bool = False  # the suite has several points: names say which one (not part of the key)
    source: str = ""  # where the suite was found (Suite.identity); not part of the key
    suite_digest: str = ""  # the suite's content (Suite.digest); not part of the key
    recipe_choice: Dict[str, Any] = field(
        default_factory=dict
    )  # accuracy: what `auto` settings resolved to, and why (not in the key)

    @property
    def in_chans(self) -> int:
        """Channels of the input this cell feeds its model (timm's ``in_chans``, 3 unless the suite says)."""
        return int(self.backbone_options.get("in_chans", 3))

    @property
    def point(self) -> Point:
        return Point((self.input_size[0], self.input_size[1]), self.batch_size, self.runtime)

    @property
    def name(self) -> str:
        seed = f"/seed{self.seed}" if self.seed is not None else ""
        at = f" @ {self.point.axes_label(spec(self.metric).axes)}" if self.swept else ""
        return f"{self.backbone}/{self.variant.label}/{self.metric}{seed}{at}"

    def config(self) -> Dict[str, Any]:
        cfg = {
            "backbone": self.backbone,
            "module": self.variant.module,
            "label": self.variant.label,
            "options": self.variant.options,
            "metric": self.metric,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "backbone_options": self.backbone_options,
        }
        if spec(self.metric).kind in ("timing", "memory"):
            cfg["latency"] = self.latency
        if self.runtime != "eager":  # absent for eager, so keys from before runtimes existed stay valid
            cfg["runtime"] = self.runtime
        if self.metric == ACCURACY:  # where the data lie (root, download) is not what they are: not in the key
            cfg.update(
                seed=self.seed,
                dataset={k: v for k, v in self.dataset.items() if k not in DATA_LOCATION},
                training=self.training,
            )
        return cfg

    def key(self, env_fingerprint: Dict[str, Any]) -> str:
        blob = json.dumps({"cell": self.config(), "env": env_fingerprint}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


DATA_LOCATION = ("root", "download")  # dataset keys that say where the data come from, not what they are


def suite_origin(path: Path, by_name: bool = False) -> str:
    """Where a suite file was found, without the machine's own folders (what records carry): ``suites/<file>``
    for a suite looked up by name (./suites or the suites shipped with attnbench alike), a path relative to the
    working folder for a file under it, ``suites/<file>`` for one in any other folder named ``suites``, else the
    file's name. The same file in two clones, a worktree or a copied results folder gets the same origin."""
    path = Path(path)
    if by_name:
        return f"suites/{path.name}"
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
        if ".." not in rel.parts:
            return rel.as_posix()
    except (ValueError, OSError):
        pass
    return f"suites/{path.name}" if path.parent.name == "suites" else path.name


def suite_digest(data: Any) -> str:
    """The content of a parsed suite document (16 hex digits of SHA-256 over its canonical JSON): comments,
    key order and formatting do not change it, any value does."""
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_reference(module: str) -> bool:
    """The two baselines: 'none' (bare backbone) and 'native' (timm's model as built)."""
    return is_baseline(module) or module == NATIVE
