"""User-facing errors: one line that names the culprit and says how to fix it.

The CLI prints ``error: <message>`` and exits with status 2 for these; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class AttnBenchError(Exception):
    """Bad input from the user (unknown name, malformed suite, module that does not fit)."""


class UnknownNameError(AttnBenchError, KeyError):
    """A module, backbone, suite, dataset or metric name that does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
        did_you_mean = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        tail = f" ({hint})" if hint else ""
        super().__init__(f"unknown {kind} {name!r}{did_you_mean}{tail}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class SuiteError(AttnBenchError):
    """A suite file that cannot be read or does not validate; names the file and field."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: field {field!r}: {problem}")


class ModuleDoesNotFit(AttnBenchError):
    """An attention module that cannot be attached to (or run inside) a backbone."""


class NonFiniteLoss(AttnBenchError):
    """Training produced a NaN/inf loss; the cell is recorded as failed."""


class RunAborted(AttnBenchError):
    """The run as a whole cannot go on (its cluster is gone, its output folder failed): not a cell's fault.

    The runner stops, writes the table from what is stored, and the CLI exits with ``exit_code``;
    no cell is stored as failed for it. ``--resume`` continues."""

    exit_code = 3


class SchedulerLost(RunAborted):
    """The Dask scheduler went away mid-run."""


class Unsupported(AttnBenchError):
    """A module that cannot run on a backbone for a known upstream reason (stated in the message).

    Stored as status ``unsupported`` and counted apart from failures; raise it only for a reason that is
    known and checked, never to hide a crash."""


class ControlFlow(BaseException):
    """attnbench's own way out of a cell that is not an error (a training run paused at an epoch end on
    request): every cell and check boundary lets it through (``guard.contained``)."""


class RuntimeMissing(AttnBenchError):
    """A runtime's package (or its GPU provider) is not installed here: its cells are ``skipped`` with
    the install hint, never failed (raised by attnbench.measures.runtimes)."""


class OutputError(RunAborted):
    """The result store or a table could not be written mid-run (disk full, folder gone)."""

    exit_code = 1
