"""The record of one cell: a typed value with a schema version, written and read by the store only.

Report, compare and validate consume ``Record`` objects, never raw JSON. ``Record.from_dict`` is the
one reader: it migrates what older versions wrote (schema 1: no version field, metric ``flops``) and
refuses anything else with :class:`ForeignRecord`, which the store counts and skips. Every field is read
against the dataclass's own type hints (and the config and stats entries the tables format), so a
hand-edited or damaged line (a position ``["a", "b"]``, a ``null`` value) is skipped, never a crash later.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from ..core.metrics import ALIASES, SPECS
from .measurement import Measurement
from .schema import CONFIG, MEASUREMENT_SHAPES, OK_CONFIG, OK_STATS, RECORD_SHAPES, STATS, Finite, Shape

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
    source: str = ""  # where its suite file was found, relative (suite.Suite.identity): never a path of the machine
    suite_digest: str = ""  # the suite's content (suite.Suite.digest): with source, tells two suites of one name apart
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
        data["source"] = legacy_source(data.get("source", ""))
        data["schema"] = SCHEMA
        _check_config(data["config"])
        m = d.get("measurement")
        if m is not None:
            data["measurement"] = read_measurement(m)
        if d["status"] == "ok" and (m is None or not math.isfinite(data["measurement"].value)):
            raise ForeignRecord("an ok record without a finite measurement")
        if d["status"] == "failed" and not (
            isinstance(d.get("error"), dict) and {"type", "message"} <= set(d["error"])
        ):
            raise ForeignRecord("a failed record without an error")
        # what the tables read without a default: a metric's config entries, and an ok row's stats
        missing = next((k for k in OK_CONFIG.get(data["metric"], ()) if k not in data["config"]), None) or next(
            (k for k in OK_STATS.get(data["metric"], ()) if d["status"] == "ok" and k not in data["measurement"].stats),
            None,
        )
        if missing is not None:
            raise ForeignRecord(f"a {d['status']} {data['metric']} record without {missing!r}")
        return cls(**data)


def legacy_source(source: str) -> str:
    """Stores written before suites had a relative identity hold the absolute path of the machine that ran them:
    read as ``suites/<file>`` when that file sat in a folder named ``suites``, else as the file's name."""
    if not source.startswith("/"):
        return source
    parts = source.rstrip("/").split("/")
    return f"suites/{parts[-1]}" if len(parts) > 1 and parts[-2] == "suites" else parts[-1]


def record_line(record: Record) -> str:
    """The one way a record is written to a store: one JSON line."""
    return json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n"


def readable(record: Record) -> Record:
    """The record as the store will read it back: itself, or -- when :meth:`Record.from_dict` would refuse what
    the harness wrote (a stat of a type the reader does not expect) -- a failed record that says so, so a store
    never holds a line its own reader skips (and ``--resume`` never appends another one)."""
    try:
        Record.from_dict(json.loads(record_line(record)))
        return record
    except ForeignRecord as exc:
        return replace(
            record,
            status="failed",
            measurement=None,
            error={
                "type": "UnreadableRecord",
                "message": f"attnbench measured this cell, but its record would not read back "
                f"({exc}); a bug in attnbench: please report it with this message",
            },
        )


def fits(value: Any, typ: Any) -> bool:
    """Whether a JSON value has the type a dataclass field declares (tuples are JSON lists; bool is not a number)."""
    if typ is Any:
        return True
    if isinstance(typ, Shape):  # a mapping of known entries (schema.py)
        return typ.admits(value, fits)
    if typ is Finite:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
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


RECORD_TYPES = {**get_type_hints(Record), **RECORD_SHAPES}  # config, env, attachment, executor: entry by entry
MEASUREMENT_TYPES = {**get_type_hints(Measurement), **MEASUREMENT_SHAPES}  # settings, stats: entry by entry
# Entries of ``config`` and ``stats`` that the tables read and format, when present (schema.py: every one of them).
CONFIG_TYPES = dict(CONFIG)
STATS_TYPES = dict(STATS)


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
