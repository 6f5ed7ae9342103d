"""The record of one cell: a typed value with a schema version, written and read by the store only.

Report, compare and validate consume ``Record`` objects, never raw JSON. ``Record.from_dict`` is the
one reader: it migrates what older versions wrote (schema 1: no version field, metric ``flops``) and
refuses anything else with :class:`ForeignRecord`, which the store counts and skips. Every field is read
against the dataclass's own type hints (and the config and stats entries the tables format), so a
hand-edited or damaged line (a position ``["a", "b"]``, a ``null`` value) is skipped, never a crash later.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from .measures.record import Measurement
from .metrics import ALIASES, SPECS

SCHEMA = 2
STATUSES = ("ok", "failed", "skipped", "unsupported")
DONE_STATUSES = ("ok", "skipped", "unsupported")  # --resume does not run these again


class ForeignRecord(ValueError):
    """A line that is not an attnbench record of a known schema."""


@dataclass(frozen=True)
class Record:
    key: str
    suite: str
    backbone: str
    label: str  # the variant's label in its suite ('se-r8')
    module: str  # registry name, or 'none'
    metric: str
    position: Tuple[int, int]  # (backbone index, variant index) in the suite: table order
    config: Dict[str, Any]  # the cell's whole configuration (what its key hashes)
    status: str  # ok / failed / skipped / unsupported
    measurement: Optional[Measurement] = None
    error: Optional[Dict[str, str]] = None  # {"type", "message"} when failed
    note: str = ""  # why skipped / unsupported, or a remark on how it ran
    attachment: Optional[Dict[str, Any]] = None  # where the module sits (attach.Attachment.as_dict())
    env: Dict[str, Any] = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    started: float = 0.0
    ended: float = 0.0
    executor: Dict[str, Any] = field(default_factory=dict)  # where and how it ran (worker, attempts, shared node)
    source: str = ""  # the suite file it was planned from (resolved path): two suites with one name never share a store
    schema: int = SCHEMA

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def value(self) -> Optional[float]:
        return float(self.measurement.value) if self.ok and self.measurement is not None else None

    @property
    def stats(self) -> Dict[str, Any]:
        return self.measurement.stats if self.measurement is not None else {}

    @property
    def seed(self) -> Optional[int]:
        return self.config.get("seed")

    def status_text(self) -> str:
        """What a table shows instead of a number."""
        if self.status == "failed":
            return f"failed ({(self.error or {}).get('type', '?')})"
        return self.status if self.status != "ok" else ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["position"] = list(self.position)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Record":
        """Read (and migrate) one stored record; ForeignRecord for anything else, whatever is wrong with it."""
        try:
            return cls._read(d)
        except ForeignRecord:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            raise ForeignRecord(f"unreadable: {type(exc).__name__}")

    @classmethod
    def _read(cls, d: Any) -> "Record":
        if not isinstance(d, dict):
            raise ForeignRecord("not a JSON object")
        schema = d.get("schema", 1)
        if schema not in (1, SCHEMA) or isinstance(schema, bool):
            raise ForeignRecord(f"schema {schema!r} is not one this attnbench reads (1 or {SCHEMA})")
        data = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ForeignRecord(f"field {f.name!r} is missing")
                continue
            if f.name != "measurement" and not fits(d[f.name], RECORD_TYPES[f.name]):
                raise ForeignRecord(f"field {f.name!r} is not a {RECORD_TYPES[f.name]}")
            data[f.name] = d[f.name]
        if d["status"] not in STATUSES:
            raise ForeignRecord(f"unknown status {d['status']!r}")
        data["metric"] = ALIASES.get(d["metric"], d["metric"])  # schema 1 wrote 'flops' for today's 'macs'
        if data["metric"] not in SPECS:
            raise ForeignRecord(f"unknown metric {d['metric']!r}")
        data["position"] = (d["position"][0], d["position"][1])
        data["schema"] = SCHEMA
        _check_config(data["config"])
        m = d.get("measurement")
        if m is not None:
            data["measurement"] = read_measurement(m)
        if d["status"] == "ok" and (m is None or not math.isfinite(data["measurement"].value)):
            raise ForeignRecord("an ok record without a finite measurement")
        if d["status"] == "failed" and not (isinstance(d.get("error"), dict) and {"type", "message"} <= set(d["error"])):
            raise ForeignRecord("a failed record without an error")
        return cls(**data)


def fits(value: Any, typ: Any) -> bool:
    """Whether a JSON value has the type a dataclass field declares (tuples are JSON lists; bool is not a number)."""
    if typ is Any:
        return True
    if typ is type(None):
        return value is None
    origin, args = get_origin(typ), get_args(typ)
    if origin is Union:
        return any(fits(value, t) for t in args)
    if origin in (tuple, Tuple):
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(fits, value, args))
    if origin in (list, List):
        return isinstance(value, list) and all(fits(v, args[0]) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict) and all(fits(k, args[0]) and fits(v, args[1]) for k, v in value.items())
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ)


RECORD_TYPES = get_type_hints(Record)
MEASUREMENT_TYPES = get_type_hints(Measurement)
# Entries of ``config`` and ``stats`` that the tables read and format, when present.
CONFIG_TYPES = {"input_size": Tuple[int, int], "batch_size": int, "runtime": str, "seed": Optional[int],
                "backbone_options": Dict[str, Any], "options": Dict[str, Any], "latency": Dict[str, Any]}
STATS_TYPES = {"median_ms": float, "iqr_ms": float, "mean_ms": float, "images_per_s": float, "runs": int,
               "rounds_ms": List[List[float]], "prepare_s": Optional[float], "attention": float, "fvcore": float,
               "conv_linear_matmul": float, "unhandled": Optional[Dict[str, Any]], "hidden_numel": Optional[int],
               "hidden_state": Optional[List[str]],
               # timings (attnbench.measures.latency): the schedule's raw data and what the machine did
               "rounds_wait": List[List[Optional[float]]], "schedule": str, "group": str, "baseline": Optional[str],
               "stop": Dict[str, Any], "contention": Dict[str, Any],
               "low_ms": Optional[float], "high_ms": Optional[float], "rounds_total_ms": List[float],
               "stages": Dict[str, Dict[str, Any]], "sites": List[Dict[str, Any]]}


def _check_config(config: Dict[str, Any]) -> None:
    for name, typ in CONFIG_TYPES.items():
        if name in config and not fits(config[name], typ):
            raise ForeignRecord(f"config field {name!r} is not a {typ}")


def read_measurement(m: Any) -> Measurement:
    """A stored measurement, its fields read against Measurement's type hints; unknown fields are ignored."""
    if not isinstance(m, dict):
        raise ForeignRecord("measurement is not a JSON object")
    for f in fields(Measurement):
        if f.name not in m:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ForeignRecord(f"measurement field {f.name!r} is missing")
        elif not fits(m[f.name], MEASUREMENT_TYPES[f.name]):
            raise ForeignRecord(f"measurement field {f.name!r} is not a {MEASUREMENT_TYPES[f.name]}")
    for name, typ in STATS_TYPES.items():
        if name in m.get("stats", {}) and not fits(m["stats"][name], typ):
            raise ForeignRecord(f"measurement stat {name!r} is not a {typ}")
    return Measurement.from_dict(m)
