"""Verdicts for suite rows: the short result of ``attnbench check`` (and of the module in its network) that a
run stores beside a plugin's records; the only part of the checklist the runner needs."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..attach.contract import (
    describe_failure,
    first_line,
)
from ..errors import AttnBenchError, Unsupported
from ..guard.cell import CellTimeout, deadline
from ..guard.interrupts import watching
from ..guard.process_state import unchanged
from .limits import BACKBONE_SCALE, CHECK_TIMEOUT_S

CHECK_STAT = "check_failed"  # stats key of an ok record whose module fails `attnbench check`


_VERDICTS: Dict[Tuple[str, int, str], Tuple[Callable, str]] = {}


def check_verdict(module: str, options: Optional[Dict] = None, timeout: float = CHECK_TIMEOUT_S) -> str:
    """'' when the module passes ``attnbench check`` alone (its declared limits respected); else one line naming
    each failed check. Run once per (module, factory, options) in a process; the runner stores it in every ok
    record of the module so each table that shows the row marks it."""
    from ..registry import get_module
    from .checklist import run_check  # the checklist itself loads only when a plugin's verdict is asked

    try:
        factory = get_module(module)
    except AttnBenchError:
        return ""
    key = (module, id(factory), json.dumps(options or {}, sort_keys=True, default=str))
    if key not in _VERDICTS:
        try:
            report = run_check(module, "", options or {}, timeout=timeout)
            text = "; ".join(
                f"{r.name}: {r.detail if len(r.detail) <= 160 else r.detail[:157] + '...'}" for r in report.failed
            )
        except AttnBenchError:
            text = ""  # options the factory does not take: the suite refuses them before this
        _VERDICTS[key] = (factory, text)  # the factory is kept so its id is not reused
    return _VERDICTS[key][1]


_NETWORK: Dict[str, Tuple[Callable, str]] = {}


def network_verdict(cell) -> str:
    """'' when the cell's model -- its module attached to its backbone at its input size -- does one real eval
    forward at batch 1 (or is ``Unsupported`` there, a declared limit); else one line: where it fails, naming the
    module, its site and the plugin's line. What the module-alone checks cannot see (an output a block writes
    into in place, a width or block size that fails at one site) marks the rows of every metric, params-only
    suites included, whose cells never run a real forward. Once per (module, options, backbone, input) in a process."""
    from ..attach.backbone import build, failure_site
    from ..registry import get_module
    from .checklist import _is_usage, _size

    variant = cell.variant
    try:
        factory = get_module(variant.module)
    except AttnBenchError:
        return ""
    size = tuple(cell.input_size)
    key = json.dumps(
        [variant.module, id(factory), variant.options, cell.backbone, cell.backbone_options, size, cell.in_chans],
        sort_keys=True,
        default=str,
    )
    if key not in _NETWORK:
        model, text = None, ""
        try:
            limit = min(CHECK_TIMEOUT_S * BACKBONE_SCALE, getattr(cell, "timeout", None) or math.inf)
            with (
                unchanged(f"module {variant.module!r}"),
                warnings.catch_warnings(),
                deadline(limit, "the in-network check"),
            ):
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                model = build(
                    cell.backbone,
                    variant.module,
                    backbone_kwargs=cell.backbone_options,
                    input_size=size,
                    **variant.options,
                ).eval()
                with torch.no_grad():
                    model(torch.randn(1, cell.in_chans, *size))
        except (Unsupported, CellTimeout):
            pass  # a declared limit (the cell says so) or a slow network: no mark
        except (Exception, SystemExit) as exc:
            if not _is_usage(exc):
                site = failure_site(model, exc)
                text = f"in {cell.backbone} at {_size(size)}: " + (
                    f"{site}: {first_line(exc)}" if site else describe_failure(exc)
                )
        _NETWORK[key] = (factory, text if len(text) <= 300 else text[:297] + "...")
    return _NETWORK[key][1]


def suite_verdicts(cells: Sequence) -> Dict[str, str]:
    """label -> verdict for the suite's module variants (the baselines have none): the checks the module fails
    alone (``check_verdict``) and, given cells (not bare variants) of a module that passes alone, one real forward
    in the first backbone each variant is planned on (``network_verdict``, under the cell's timeout)."""
    from ..attach.backbone import split_options
    from ..suite.model import is_reference

    out: Dict[str, List[str]] = {}
    with watching():  # a plugin's own KeyboardInterrupt is a failed check, a real Ctrl-C stops the run
        for c in cells:
            v = getattr(c, "variant", c)
            if v.label in out or is_reference(v.module):
                continue
            texts = [check_verdict(v.module, split_options(v.options)[1])]
            if v is not c and not texts[0]:  # a module that fails alone is marked already: no network to build
                texts.append(network_verdict(c))
            out[v.label] = [t for t in texts if t]
    return {label: "; ".join(texts) for label, texts in out.items() if texts}


def with_verdict(record, verdicts: Dict[str, str]):
    """The record with its module's failed checks in ``stats["check_failed"]`` (ok records of a failing module)."""
    text = verdicts.get(record.label)
    if not text or not record.ok or record.measurement is None:
        return record
    measurement = replace(record.measurement, stats={**record.measurement.stats, CHECK_STAT: text})
    return replace(record, measurement=measurement)
