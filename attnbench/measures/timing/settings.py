"""Latency settings: the suite's ``latency:`` keys with their defaults and checks (a leaf: no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...core import stats as st
from ...core.settings import (
    BOOLEAN,
    NONNEGATIVE_INT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Rule,
    choice,
    is_finite_number,
    optional,
    suite_field,
)

AMP_NAMES = ("float16", "fp16", "bfloat16", "bf16")  # the names a suite may give (torch dtypes: AMP_DTYPES)


NICE: Rule = (
    lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and -20 <= v <= 19),
    "must be an integer from -20 to 19 (or null: leave the priority as it is)",
)


FRACTION: Rule = (lambda v: is_finite_number(v) and 0 < v <= 1, "must be a number in (0, 1]")


BATCHES = 5  # batch means per interval (docs/latency.md, "Across runs": chosen from traces of two hosts)


DEFAULT_MAX_TIME = 60.0  # seconds of timing per group when a target is set and max_time is not


@dataclass(frozen=True)
class LatencySettings:
    batch_size: int = 1
    input_size: tuple = (224, 224)
    in_chans: int = 3
    # Suite-settable (the suite's `latency:` mapping): keys, defaults and checks are these fields.
    threads: Optional[int] = suite_field(None, optional(POSITIVE_INT))  # CPU threads; None = torch's current setting
    warmup: int = suite_field(5, NONNEGATIVE_INT)
    rounds: int = suite_field(5, POSITIVE_INT)  # rounds at least (exactly, without a target)
    min_time: float = suite_field(0.3, POSITIVE_NUMBER)  # seconds per variant per round
    min_iters: int = suite_field(3, POSITIVE_INT)  # cycles per round at least
    batches: int = suite_field(
        BATCHES, POSITIVE_INT
    )  # intervals over this many batch means of consecutive rounds (1: over rounds)
    target: Optional[float] = suite_field(None, optional(POSITIVE_NUMBER))  # 95% half-width of every Δ, in points
    max_time: Optional[float] = suite_field(None, optional(POSITIVE_NUMBER))  # seconds of timing per group
    direct_target: float = suite_field(5.0, POSITIVE_NUMBER)  # attention_cpu: 95% half-width of each total, % of itself
    nice: Optional[int] = suite_field(-20, NICE)  # niceness asked for while timing (granted to root / CAP_SYS_NICE)
    clean_wait: float = suite_field(st.CLEAN_WAIT, FRACTION)  # run-queue wait share above which a call is disturbed
    unstable_threshold: float = suite_field(0.10, POSITIVE_NUMBER)
    amp: Optional[str] = suite_field(None, choice(None, *AMP_NAMES))  # "fp16" / "bf16" autocast
    channels_last: bool = suite_field(False, BOOLEAN)
    runtime: str = (
        "eager"  # a suite axis, not a latency key: eager, compile, onnxruntime, openvino (attnbench.measures.runtimes)
    )
    train: bool = False  # time a full training step (forward, backward, SGD step) instead
    timeout: Optional[float] = None  # seconds one model's warm-up or one call may take (a hung module fails alone)

    @property
    def time_budget(self) -> Optional[float]:
        return self.max_time if self.max_time is not None else (DEFAULT_MAX_TIME if self.target is not None else None)

    def as_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "input_size": list(self.input_size),
            "threads": self.threads,
            "warmup": self.warmup,
            "rounds": self.rounds,
            "min_time": self.min_time,
            "min_iters": self.min_iters,
            "target": self.target,
            "direct_target": self.direct_target,
            "max_time": self.time_budget,
            "nice": self.nice,
            "clean_wait": self.clean_wait,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "runtime": self.runtime,
            "mode": "train" if self.train else "eval",
            "schedule": "alternating",
            "batches": self.batches,
        }
