"""The record of one cell: a typed value with a schema version, written and read by the store only.

Report, compare and validate consume ``Record`` objects, never raw JSON. ``Record.from_dict`` is the
one reader: it migrates what older versions wrote (schema 1: no version field, metric ``flops``) and
refuses anything else with :class:`ForeignRecord`, which the store counts and skips.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from .measures.record import Measurement
from .metrics import ALIASES

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
        """Read (and migrate) one stored record; ForeignRecord for anything else."""
        if not isinstance(d, dict):
            raise ForeignRecord("not a JSON object")
        schema = d.get("schema", 1)
        if schema not in (1, SCHEMA):
            raise ForeignRecord(f"schema {schema!r} is not one this attnbench reads (1 or {SCHEMA})")
        for name, typ in (("key", str), ("suite", str), ("backbone", str), ("label", str), ("module", str),
                          ("metric", str), ("position", list), ("config", dict), ("status", str)):
            if not isinstance(d.get(name), typ):
                raise ForeignRecord(f"field {name!r} is missing or not a {typ.__name__}")
        if d["status"] not in STATUSES or len(d["position"]) != 2:
            raise ForeignRecord("unknown status or position")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in d.items() if k in known}
        data["metric"] = ALIASES.get(d["metric"], d["metric"])  # schema 1 wrote 'flops' for today's 'macs'
        data["position"] = (int(d["position"][0]), int(d["position"][1]))
        data["schema"] = SCHEMA
        m = d.get("measurement")
        if d["status"] == "ok":
            if not isinstance(m, dict) or "value" not in m:
                raise ForeignRecord("an ok record without a measurement")
        if isinstance(m, dict):
            try:
                data["measurement"] = Measurement.from_dict(m)
            except TypeError as exc:
                raise ForeignRecord(f"measurement: {exc}")
        if d["status"] == "failed" and not (isinstance(d.get("error"), dict) and {"type", "message"} <= set(d["error"])):
            raise ForeignRecord("a failed record without an error")
        for name, typ in (("env", dict), ("executor", dict)):
            if not isinstance(data.get(name, {}), typ):
                raise ForeignRecord(f"field {name!r} is not a {typ.__name__}")
        return cls(**data)
