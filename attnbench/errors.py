"""Every error attnbench raises on purpose, in three families that mean one thing each.

- :class:`UsageError`: bad input, found before any work (an unknown name, a malformed suite, a bad option).
  One line that names the culprit and the fix; the CLI exits 2.
- :class:`CellError`: what one cell ended in (a timeout, NaN, out of memory, a module that does not fit, a
  known upstream limit, a missing runtime). Inside a run it is stored in that cell's record -- ``failed``,
  ``unsupported`` or ``skipped`` (``status``) -- and the run goes on; outside a run (``measure``, ``check``)
  it is the user's request failing, and the CLI exits 2 with its one line.
- :class:`RunAborted`: the run as a whole cannot go on (its cluster is gone, its output folder failed); no
  cell is stored as failed for it, and the CLI exits with its ``exit_code``.

``exit_status`` is the one mapping from an error to the CLI's exit status. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class AttnBenchError(Exception):
    """Root of the three families; a bare one (older call sites, plugins) counts as bad input."""


class UsageError(AttnBenchError):
    """Bad input from the user, before any work: exit 2."""


class CellError(AttnBenchError):
    """What one cell ended in; stored in its record with ``status`` (the run goes on)."""

    status = "failed"


class RunAborted(AttnBenchError):
    """The run as a whole cannot go on (its cluster is gone, its output folder failed): not a cell's fault.

    The runner stops, writes the table from what is stored, and the CLI exits with ``exit_code``;
    no cell is stored as failed for it. ``--resume`` continues."""

    exit_code = 3


def exit_status(exc: AttnBenchError) -> int:
    """The CLI's exit status for an error that reached it: a run's abort says its own; everything else
    (bad input, or a cell outcome of a command that is one cell: ``measure``, ``check``) is 2."""
    return exc.exit_code if isinstance(exc, RunAborted) else 2


class UnknownNameError(UsageError, KeyError):
    """A module, backbone, suite, dataset or metric name that does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
        did_you_mean = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        tail = f" ({hint})" if hint else ""
        super().__init__(f"unknown {kind} {name!r}{did_you_mean}{tail}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class SuiteError(UsageError):
    """A suite file that cannot be read or does not validate; names the file and field."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: field {field!r}: {problem}")


class ModuleDoesNotFit(CellError):
    """An attention module that cannot be attached to (or run inside) a backbone."""


class NonFiniteLoss(CellError):
    """Training produced a NaN/inf loss; the cell is recorded as failed."""


class SchedulerLost(RunAborted):
    """The Dask scheduler went away mid-run."""


class Unsupported(CellError):
    """A module that cannot run on a backbone for a known upstream reason (stated in the message).

    Stored as status ``unsupported`` and counted apart from failures; raise it only for a reason that is
    known and checked, never to hide a crash."""

    status = "unsupported"


class ControlFlow(BaseException):
    """attnbench's own way out of a cell that is not an error (a training run paused at an epoch end on
    request): every cell and check boundary lets it through (``guard.contained``)."""


class RuntimeMissing(CellError):
    """A runtime's package (or its GPU provider) is not installed here: its cells are ``skipped`` with
    the install hint, never failed (raised by attnbench.measures.runtimes)."""

    status = "skipped"


class OutputError(RunAborted):
    """The result store or a table could not be written mid-run (disk full, folder gone)."""

    exit_code = 1


class CellTimeout(CellError):
    """A cell ran past the suite's ``timeout``."""


class NonFiniteOutput(CellError):
    """A model produced NaN or inf: a measurement of it would be stored as ok while it is not."""


class OutOfMemory(CellError):
    """CPU or GPU allocation failure."""


class Escaped(CellError):
    """Code under a boundary raised what ends whole programs -- ``SystemExit`` (``sys.exit(0)`` too),
    ``GeneratorExit``, a bare ``BaseException``, a ``KeyboardInterrupt`` no signal raised -- and it became
    this cell's or check step's own failure (``guard.cell.contained``), never the end of the run or a silent pass."""


class StateChanged(CellError):
    """A module changed process-wide state (put back before this is raised); the message names the change."""


class OutputMismatch(CellError):
    """A runtime's output differs from eager beyond ATOL/RTOL: it computes a different function."""


class ConversionFailed(ModuleDoesNotFit):
    """The model could not be exported, converted or compiled for a runtime (the cause is chained)."""


class NoWorker(CellError):
    """No live worker could take a task for longer than the watchdog's limit."""
