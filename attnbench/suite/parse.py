"""Validating a suite: the YAML mapping -> Suite, every error naming the file and field (``FILE: field 'X': problem``)."""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..core.memory import input_problem
from ..core.metrics import ACCURACY, ALIASES, RUNTIMES, SUITE_METRICS, spec
from ..core.settings import POSITIVE_NUMBER, short, suite_rules
from ..errors import AttnBenchError, SuiteError, UnknownNameError
from ..registry import BASELINE_NAMES, get_module, is_baseline
from .model import (
    AXES,
    MAX_CELLS,
    MAX_NAME,
    MAX_POINTS,
    MAX_TIMED_CELLS,
    NATIVE,
    TOP_KEYS,
    Point,
    Suite,
    Variant,
    _name,
    is_reference,
    suite_digest,
    suite_origin,
)


def latency_rules() -> Dict[str, Any]:
    """The suite's `latency:` keys: LatencySettings' suite fields (imported here, not at the top: the latency
    module loads torch, and the report layer imports this module for :class:`Point`)."""
    from ..measures.timing.settings import LatencySettings

    return suite_rules(LatencySettings)


def _need(cond: bool, source: str, fld: str, problem: str) -> None:
    if not cond:
        raise SuiteError(source, fld, problem)


def _mapping(data: Dict[str, Any], key: str, source: str, problem: str) -> Dict[Any, Any]:
    """A mapping field: absent or null is empty; anything else that is not a mapping -- ``0``, ``[]``, ``""``,
    ``false`` included, which ``data.get(key) or {}`` would silently read as empty -- is refused."""
    value = data.get(key)
    if value is None:
        return {}
    _need(isinstance(value, dict), source, key, f"{problem}, got {short(value)}")
    return value


def _pos_int(value, source, fld) -> int:
    _need(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        source,
        fld,
        f"must be a positive integer, got {short(value)}",
    )
    return value


def parse_suite(data: Any, source: str, default_name: str = "suite", check_names: bool = True) -> Suite:
    _need(isinstance(data, dict), source, "<file>", "must be a YAML mapping of suite fields")
    for key in data:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(TOP_KEYS)}"
            raise SuiteError(source, _name(key), f"unknown field; {hint}")
    name = data.get("name", default_name)
    _need(
        isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum(),
        source,
        "name",
        f"must be a word made of letters, digits, '-' or '_', got {short(name)}",
    )
    _need(
        len(name) <= MAX_NAME,
        source,
        "name",
        f"is {len(name)} characters long ({short(name, 40)}); a suite name "
        f"names its files (<name>.jsonl, <name>-predictors.png, history/<name>-<time>/): at most {MAX_NAME}",
    )

    kind = data.get("kind", "overhead")
    _need(kind in ("overhead", "accuracy"), source, "kind", f"must be 'overhead' or 'accuracy', got {short(kind)}")
    backbones = data.get("backbones")
    _need(
        isinstance(backbones, list) and backbones and all(isinstance(b, str) for b in backbones),
        source,
        "backbones",
        f"must be a non-empty list of timm model names, got {short(backbones)}",
    )
    first: Dict[str, int] = {}
    for i, b in enumerate(backbones):
        _need(
            first.setdefault(b, i) == i,
            source,
            f"backbones[{i}]",
            f"names {short(b)} again (backbones[{first[b]}]); drop one",
        )
    if check_names:
        import timm

        for i, b in enumerate(backbones):
            if not timm.is_model(b):
                raise SuiteError(source, f"backbones[{i}]", str(UnknownNameError("backbone", b, timm.list_models())))

    module_options = _mapping(data, "module_options", source, "must map a module name to a mapping of options")
    _need(
        all(isinstance(v, dict) for v in module_options.values()),
        source,
        "module_options",
        "must map a module name to a mapping of options",
    )
    modules = data.get("modules")
    _need(isinstance(modules, list) and modules, source, "modules", f"must be a non-empty list, got {short(modules)}")
    variants: List[Variant] = []
    entry_index: Dict[str, int] = {}  # label -> index in `modules` (the 'native' row inserted below has none)
    problems: List[SuiteError] = []  # every module entry that cannot be used, reported together
    for i, entry in enumerate(modules):
        fld = f"modules[{i}]"
        if isinstance(entry, str):
            variant = Variant(entry, "none" if is_baseline(entry) else entry, dict(module_options.get(entry, {})))
        elif isinstance(entry, dict):
            entry = dict(entry)
            module = entry.pop("module", None) or entry.get("name")
            label = entry.pop("name", None) or module
            _need(
                isinstance(module, str) and isinstance(label, str),
                source,
                fld,
                "a mapping needs 'module' (registry name) and optionally 'name' (label)",
            )
            override = entry.pop("training", {})
            _need(
                isinstance(override, dict) and (not override or kind == "accuracy"),
                source,
                f"{fld}.training",
                "a per-module training override is a mapping, in accuracy suites only",
            )
            variant = Variant(label, "none" if is_baseline(module) else module, entry, dict(override))
        else:
            raise SuiteError(source, fld, f"must be a module name or a mapping, got {short(entry)}")
        if check_names and not is_reference(variant.module):
            try:
                get_module(variant.module)
            except UnknownNameError as exc:
                problems.append(SuiteError(source, fld, str(exc)))
        _need(
            variant.label not in [v.label for v in variants],
            source,
            fld,
            f"duplicate module label {short(variant.label)}; give it a 'name'",
        )
        reserved = variant.label if is_reference(variant.label) and not _is_own_baseline(variant) else None
        _need(
            reserved is None,
            source,
            fld,
            f"the label {short(reserved)} is reserved for the "
            f"{'bare backbone' if is_baseline(reserved) else 'backbone as timm builds it'} (the baseline every Δ and "
            f"table refers to); give module {short(variant.module)} another 'name'",
        )
        same = next((entry_index[v.label] for v in variants if _measures_alike(v, variant)), None)
        _need(
            same is None,
            source,
            fld,
            f"measures the same as modules[{same}] ({short(variant.module)} with the same options) "
            "under another label; drop one or change its options",
        )
        entry_index[variant.label] = i
        variants.append(variant)
    for mod in module_options:
        _need(
            mod in [v.label for v in variants] or mod in BASELINE_NAMES,
            source,
            f"module_options.{_name(mod)}",
            "names no module of this suite",
        )
    labels = [v.label for v in variants]
    if kind == "overhead" and "none" in labels and NATIVE not in labels:
        # Backbones that ship attention get both baselines: the bare one (Δ reference) and timm's as built.
        variants.insert(labels.index("none") + 1, Variant(NATIVE, NATIVE, auto=True))
    if check_names:
        unknown = {p.field for p in problems}
        for variant in variants:
            fld = f"modules[{entry_index.get(variant.label, '?')}]"
            if fld in unknown:
                continue
            try:
                _check_options(
                    variant, source, f"module_options.{variant.label}" if variant.label in module_options else fld
                )
            except SuiteError as exc:
                problems.append(exc)
    order = {
        **{f"modules[{i}]": i for i in range(len(modules))},
        **{f"module_options.{label}": i for label, i in entry_index.items()},
    }
    problems.sort(key=lambda p: order.get(p.field, len(modules)))  # in the file's order
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SuiteError(
            source,
            "modules",
            f"{len(problems)} module entries cannot be used: "
            + "; ".join(f"{p.field}: {getattr(p, 'problem', p)}" for p in problems),
        )

    rules = latency_rules()
    latency = dict(_mapping(data, "latency", source, f"must be a mapping with keys {list(rules)}"))
    legacy_compile = latency.pop("compile", None)  # earlier versions: latency.compile -> today's runtime axis
    _need(
        legacy_compile in (None, True, False),
        source,
        "latency.compile",
        f"must be true or false, got {short(legacy_compile)}",
    )
    if legacy_compile and "runtime" not in data:
        data = {**data, "runtime": "compile"}
    points, base = _points(data, source, kind)

    dataset, training, seeds = _accuracy_sections(data, source, kind, check_names, variants)
    metrics = data.get("metrics", ["params", "macs"] if kind == "overhead" else [])
    _need(
        isinstance(metrics, list) and all(isinstance(m, str) for m in metrics),
        source,
        "metrics",
        f"must be a list from {list(SUITE_METRICS)}",
    )
    metrics = [ALIASES.get(m, m) for m in metrics]
    for i, m in enumerate(metrics):
        if m not in SUITE_METRICS:
            raise SuiteError(
                source,
                f"metrics[{i}]",
                str(UnknownNameError("metric", m, SUITE_METRICS, f"known: {', '.join(SUITE_METRICS)}")),
            )
    _need(len(set(metrics)) == len(metrics), source, "metrics", "names a metric twice")
    _need(kind == "accuracy" or metrics, source, "metrics", "must name at least one metric")
    _need(
        kind == "overhead" or not metrics,
        source,
        "metrics",
        "an accuracy suite measures accuracy only; "
        "put params/FLOPs/latency in an overhead suite (its latency is joined into the accuracy table)",
    )

    for key, value in latency.items():
        _need(key in rules, source, f"latency.{_name(key)}", f"unknown setting; known: {', '.join(rules)}")
        check, problem = rules[key]
        _need(check(value), source, f"latency.{key}", f"{problem}, got {short(value)}")
    timed = [m for m in metrics if "runtime" in spec(m).axes]
    for runtime in dict.fromkeys(p.runtime for p in points):
        _need(
            not timed or any(runtime in spec(m).runtimes for m in timed),
            source,
            "runtime",
            f"{runtime} times none of this suite's metrics ({', '.join(timed)}); "
            + ("tensorrt is a GPU runtime: add latency_gpu" if runtime == "tensorrt" else "add latency_cpu"),
        )
    _need(
        not latency.get("amp") or all(p.runtime == "eager" for p in points),
        source,
        "latency.amp",
        "autocast applies to the eager runtime only; drop amp or the other runtimes",
    )
    device = data.get("device", "cuda")
    _need(
        isinstance(device, str) and device.startswith("cuda"),
        source,
        "device",
        f"must be 'cuda' or 'cuda:N', got {short(device)}",
    )
    dtype = data.get("dtype", "float32")
    _need(
        dtype == "float32",
        source,
        "dtype",
        "only float32 weights are supported; use latency.amp for fp16/bf16 autocast",
    )
    backbone_options = _mapping(data, "backbone_options", source, "must be a mapping of timm.create_model keywords")
    _check_backbone_options(backbone_options, backbones, kind, source, check_names)
    if check_names:
        _check_stage_numbers(variants, entry_index, backbones, backbone_options, source)
    if check_names:  # ViT, Mixer, Swin ... take one input size as timm builds them: said now, not in every cell
        from ..attach.backbone import fixed_size_problem

        for b in backbones:
            for size in dict.fromkeys(p.input_size for p in points):
                problem = fixed_size_problem(b, size, backbone_options)
                _need(problem is None, source, "input_size", str(problem))
    description = data.get("description") or ""
    _need(isinstance(description, str), source, "description", f"must be text, got {short(description)}")
    timeout = data.get("timeout")
    if timeout is not None:
        check, problem = POSITIVE_NUMBER
        _need(check(timeout), source, "timeout", f"{problem} (seconds per cell), got {short(timeout)}")
    suite = Suite(
        name=name,
        source=source,
        backbones=list(backbones),
        variants=variants,
        metrics=list(metrics),
        input_size=base.input_size,
        batch_size=base.batch_size,
        device=device,
        dtype=dtype,
        kind=kind,
        description=description,
        backbone_options=dict(backbone_options),
        latency=dict(latency),
        dataset=dataset,
        training=training,
        seeds=seeds,
        timeout=float(timeout) if timeout is not None else None,
        points=points,
        digest=suite_digest(data),
        origin=suite_origin(Path(source)) if source.endswith((".yaml", ".yml")) else "",
    )
    _check_cost(
        suite,
        "sweeps"
        if data.get("sweeps") is not None
        else next((a for a in AXES if isinstance(data.get(a), list) and len(data[a]) > 1), "input_size"),
    )
    return suite


def _check_stage_numbers(
    variants: List[Variant],
    entry_index: Dict[str, int],
    backbones: List[str],
    backbone_options: Dict[str, Any],
    source: str,
) -> None:
    """``stages: [5]`` on a backbone with four stages is refused now, not as a failed cell per metric: each
    backbone is built on the meta device (no memory, a fraction of a second) to count its stages."""
    from ..attach.backbone import ALIASES

    wanted = [
        (v, max(s))
        for v in variants
        for k, s in v.options.items()
        if ALIASES.get(k, k) == "stages" and isinstance(s, list) and s and all(isinstance(x, int) for x in s)
    ]
    if not wanted:
        return
    import warnings

    import timm
    import torch

    from ..attach.placement import stage_entries

    for b in backbones:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n = len(stage_entries(timm.create_model(b, **{**backbone_options, "pretrained": False})))
        except Exception:  # a backbone with no stages to count: its cells say why
            continue
        for v, top in wanted:
            _need(
                top <= n,
                source,
                f"modules[{entry_index.get(v.label, '?')}]",
                f"stage {top} does not exist in {b} (stages 1..{n}); fix 'stages'",
            )


def _is_own_baseline(v: Variant) -> bool:
    """A baseline listed under its own name: 'none'/'baseline' for the bare backbone, 'native' for timm's."""
    return (is_baseline(v.label) and v.module == "none") or (v.label == NATIVE and v.module == NATIVE)


def _measures_alike(a: Variant, b: Variant) -> bool:
    """Two variants that would store the same numbers twice (same module, options and training)."""
    return (a.module, a.options, a.training) == (b.module, b.options, b.training)


def _check_backbone_options(
    options: Dict[Any, Any], backbones: List[str], kind: str, source: str, check_names: bool
) -> None:
    """backbone_options are timm.create_model keywords: never ``pretrained`` (nothing is downloaded), an
    ``in_chans`` the input follows, and keys and values timm accepts -- found by building each backbone
    on the meta device (no memory, a fraction of a second) rather than as a failure in every cell."""
    if not options:
        return
    for key in options:
        _need(
            isinstance(key, str) and key.isidentifier(),
            source,
            f"backbone_options.{_name(key)}",
            "must be a keyword name",
        )
    _need(
        kind != "accuracy",
        source,
        "backbone_options",
        "an accuracy suite builds each backbone for its dataset "
        "(in_chans, num_classes) and applies no other backbone option to training; drop backbone_options",
    )
    _need(
        options.get("pretrained", False) is False,
        source,
        "backbone_options.pretrained",
        f"attnbench never downloads weights (every model is built with pretrained=False), got {short(options.get('pretrained'))}; drop it",
    )
    _need(
        not options.get("features_only"),
        source,
        "backbone_options.features_only",
        "the harness measures the classifier network; a feature extractor returns a list of maps: drop it",
    )
    if "in_chans" in options:
        _pos_int(options["in_chans"], source, "backbone_options.in_chans")  # every cell's input gets this many channels
    if not check_names:
        return
    import re
    import warnings

    import timm
    import torch

    for b in backbones:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                timm.create_model(b, **{**options, "pretrained": False})
        except Exception as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            key = re.search(r"unexpected keyword argument '(\w+)'", text)
            fld = f"backbone_options.{key.group(1)}" if key else "backbone_options"
            raise SuiteError(
                source,
                fld,
                f"timm cannot build {b!r} with {short(options)}: {type(exc).__name__}: {text[:160]}; fix or drop it",
            )


def _check_cost(suite: Suite, points_field: str) -> None:
    """Refuse a suite whose cells, counted from its lists before any is made, would run for days."""
    listed = [v for v in suite.variants if not v.auto]  # the 'native' row only where a backbone has one: not counted
    if suite.kind == ACCURACY:
        factors = {"backbones": len(suite.backbones), "modules": len(listed), "seeds": len(suite.seeds)}
        cells = timed = len(suite.backbones) * len(listed) * len(suite.seeds)
    else:

        def variants(m):
            return sum(1 for v in listed if not (getattr(spec(m), "modules_only", False) and is_reference(v.module)))

        per_metric = {m: len(suite.metric_points(m)) * variants(m) for m in suite.metrics}
        factors = {
            "backbones": len(suite.backbones),
            "modules": len(listed),
            points_field: max((len(suite.metric_points(m)) for m in suite.metrics), default=1),
        }
        cells = len(suite.backbones) * sum(per_metric.values())
        timed = len(suite.backbones) * sum(n for m, n in per_metric.items() if spec(m).exclusive)
    what = " x ".join(f"{n:,} {k}" for k, n in factors.items())
    fld = max(factors, key=factors.get)
    _need(
        cells <= MAX_CELLS,
        suite.source,
        fld,
        f"plans {cells:,} cells ({what} per metric); a suite may plan at most "
        f"{MAX_CELLS:,}: split it into several suites",
    )
    _need(
        timed <= MAX_TIMED_CELLS,
        suite.source,
        fld,
        f"plans {timed:,} timing cells ({what}), each seconds to minutes; "
        f"a suite may time at most {MAX_TIMED_CELLS:,}: sweep fewer points or split it",
    )


def _sizes(value: Any, source: str, fld: str) -> List[Tuple[int, int]]:
    """input_size: an int (square), 'HxW', [height, width], or a list of them (a sweep)."""

    def one(v, f):
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return (v, v)
        if isinstance(v, str) and v.count("x") == 1 and all(p.strip().isdigit() and int(p) > 0 for p in v.split("x")):
            h, w = v.split("x")
            return (int(h), int(w))
        if (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in v)
        ):
            return (v[0], v[1])
        raise SuiteError(source, f, f"must be a positive int, 'HxW' or [height, width], got {short(v)}")

    if isinstance(value, list):  # a sweep: [112, 224, 448], ['224x160', ...] or [[224, 160], ...]
        _need(bool(value), source, fld, "an empty list measures nothing; give a size or a list of sizes")
        sizes = [one(v, f"{fld}[{i}]") for i, v in enumerate(value)]
    else:
        sizes = [one(value, fld)]
    _need(
        len(set(sizes)) == len(sizes),
        source,
        fld,
        f"names a size twice; a list is a sweep (for one HxW input write '{sizes[0][0]}x{sizes[0][1]}')",
    )
    return sizes


def _batches(value: Any, source: str, fld: str) -> List[int]:
    values = value if isinstance(value, list) and value else [value]
    out = [_pos_int(v, source, fld if len(values) == 1 else f"{fld}[{i}]") for i, v in enumerate(values)]
    _need(len(set(out)) == len(out), source, fld, "names a batch size twice")
    return out


def _runtimes(value: Any, source: str, fld: str) -> List[str]:
    values = value if isinstance(value, list) and value else [value]
    for i, v in enumerate(values):
        if v not in RUNTIMES:
            raise SuiteError(
                source,
                fld if len(values) == 1 else f"{fld}[{i}]",
                str(
                    UnknownNameError(
                        "runtime", v if isinstance(v, str) else short(v), RUNTIMES, f"known: {', '.join(RUNTIMES)}"
                    )
                ),
            )
    _need(len(set(values)) == len(values), source, fld, "names a runtime twice")
    return list(values)


AXIS_PARSERS = {"input_size": _sizes, "batch_size": _batches, "runtime": _runtimes}


def _points(data: Dict[str, Any], source: str, kind: str) -> Tuple[List[Point], Point]:
    """The suite's points: the grid of the top-level axes, or the union of the grids its ``sweeps``
    give (an axis a sweep does not name keeps the top-level values). Base = first value of each axis."""
    top = {
        "input_size": _sizes(data.get("input_size", 224), source, "input_size"),
        "batch_size": _batches(data.get("batch_size", 1), source, "batch_size"),
        "runtime": _runtimes(data.get("runtime", "eager"), source, "runtime"),
    }
    sweeps = data.get("sweeps")
    if kind == "accuracy":
        _need(
            all(len(v) == 1 for v in top.values()) and sweeps is None and top["runtime"] == ["eager"],
            source,
            "input_size",
            "an accuracy suite trains at one input size and batch (training.batch_size); sweeps and "
            "runtimes are for overhead suites",
        )
    grids = [dict(top)]
    if sweeps is not None:
        _need(
            isinstance(sweeps, list) and sweeps and all(isinstance(s, dict) and s for s in sweeps),
            source,
            "sweeps",
            f"must be a non-empty list of mappings of {', '.join(AXES)}, got {short(sweeps)}",
        )
        grids = []
        for i, sweep in enumerate(sweeps):
            for key in sweep:
                _need(key in AXES, source, f"sweeps[{i}].{_name(key)}", f"unknown axis; known: {', '.join(AXES)}")
            grids.append({**top, **{k: AXIS_PARSERS[k](v, source, f"sweeps[{i}].{k}") for k, v in sweep.items()}})
    sizes = [len(g["input_size"]) * len(g["batch_size"]) * len(g["runtime"]) for g in grids]
    if sum(sizes) > MAX_POINTS:  # counted before any point is made: 1000 x 1000 is refused at once
        i = max(range(len(grids)), key=sizes.__getitem__)
        shape = " x ".join(f"{len(grids[i][a]):,} {a}" for a in AXES)
        fld = f"sweeps[{i}]" if sweeps is not None else max(AXES, key=lambda a: len(top[a]))
        raise SuiteError(
            source,
            fld,
            f"plans {sum(sizes):,} points ({shape}); a suite may plan at most {MAX_POINTS:,}: "
            "sweep one axis at a time with 'sweeps:' or split it",
        )
    points = list(
        dict.fromkeys(
            Point(s, b, r)
            for g in grids
            for s, b, r in itertools.product(g["input_size"], g["batch_size"], g["runtime"])
        )
    )
    in_chans = data["backbone_options"].get("in_chans", 3) if isinstance(data.get("backbone_options"), dict) else 3
    largest = max(points, key=lambda p: p.batch_size * p.input_size[0] * p.input_size[1])
    problem = input_problem(largest.batch_size, largest.input_size, in_chans if isinstance(in_chans, int) else 3)
    _need(problem is None, source, "batch_size", f"{problem}; lower batch_size or input_size")
    return points, Point(top["input_size"][0], top["batch_size"][0])


def _check_options(variant: Variant, source: str, fld: str) -> None:
    """A misspelt option (``reducton: 8``) is found now, not as failed cells at run time."""
    from ..attach.backbone import check_attach_options, check_module_options, split_options

    if is_reference(variant.module):
        if variant.options:
            raise SuiteError(
                source, fld, f"options {sorted(map(str, variant.options))} given to the baseline; drop them"
            )
        return
    attach, module_options = split_options(variant.options)
    try:
        check_attach_options(attach)
        check_module_options(variant.module, get_module(variant.module), module_options)
    except AttnBenchError as exc:
        raise SuiteError(source, fld, str(exc))


def _accuracy_sections(data: Dict[str, Any], source: str, kind: str, check_names: bool, variants: List[Variant]):
    """dataset / training / seeds: required for accuracy suites, refused elsewhere."""
    from ..train.loop import DATASET_KEYS, TRAINING_KEYS, validate_training

    if kind != "accuracy":
        for key in ("dataset", "training", "seeds"):
            _need(key not in data, source, key, "only accuracy suites train; add 'kind: accuracy' or drop it")
        return {}, {}, []
    dataset = data.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    _need(
        isinstance(dataset, dict) and isinstance(dataset.get("name"), str),
        source,
        "dataset",
        "must be a dataset name or a mapping with 'name' (see `attnbench list datasets`)",
    )
    for key in dataset:
        _need(key in DATASET_KEYS, source, f"dataset.{key}", f"unknown setting; known: {', '.join(DATASET_KEYS)}")
    for key in ("train_subset", "test_subset"):
        if dataset.get(key) is not None:
            _pos_int(dataset[key], source, f"dataset.{key}")
    if check_names:
        from ..registry import DATASETS

        if dataset["name"] not in DATASETS.names():
            raise SuiteError(
                source, "dataset.name", str(UnknownNameError("dataset", dataset["name"], DATASETS.names()))
            )
    training = _mapping(data, "training", source, f"must be a mapping with keys {list(TRAINING_KEYS)}")
    sections = [("training", training)] + [(f"modules[{i}].training", v.training) for i, v in enumerate(variants)]
    for prefix, section in sections:
        merged = training if prefix == "training" else {**training, **section}
        for fld, problem in validate_training(merged, dataset):
            raise SuiteError(source, f"{prefix if fld in section else 'training'}.{_name(fld)}", problem)
    seeds = data.get("seeds", [0])
    _need(
        isinstance(seeds, list) and seeds and all(isinstance(x, int) for x in seeds) and len(set(seeds)) == len(seeds),
        source,
        "seeds",
        f"must be a non-empty list of distinct integers, got {short(seeds)}",
    )
    return dict(dataset), dict(training), list(seeds)
