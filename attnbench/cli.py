"""``attnbench`` command line: run suites, list what exists, rebuild and compare tables."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import AttnBenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="attnbench: run suites, list what exists, check modules, rebuild and compare tables.",
    rich_markup_mode=None,
)
out_console = Console()
err_console = Console(stderr=True)
_said: List[str] = []  # a command that already printed why it stopped (an interrupted run): main adds nothing


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        out_console.print(f"attnbench {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="print attnbench's version and exit"
    ),
):
    """attnbench: what attention modules cost and buy on timm backbones."""


class What(str, Enum):
    modules = "modules"
    backbones = "backbones"
    suites = "suites"
    datasets = "datasets"


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Whatever runs inside prints to stderr -- a plugin's print, a C library writing to file descriptor 1,
    a worker process started meanwhile -- so stdout carries the table alone."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError):  # not a real file (an in-process test runner): Python level only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


@app.command("list")
def list_cmd(
    what: What = typer.Argument(..., help="modules, backbones, suites or datasets"),
    pattern: str = typer.Option("", "--filter", help="glob for backbones, e.g. 'resnet*'"),
    details: bool = typer.Option(
        False,
        "--details",
        help="modules: import each plugin and show its package, entry point and signature (or why it fails to import)",
    ),
):
    """List registered modules, timm backbones, suites or datasets (module names come from package metadata:
    no plugin is imported unless --details)."""
    if what is What.modules:
        from .registry import list_modules

        if details:
            from .suite.plugins import module_details

            with _stdout_to_stderr():  # what a plugin prints on import is not a listed line
                names = module_details()
        else:
            names = list_modules()
    elif what is What.backbones:
        from .attach.backbone import list_backbones

        names = list_backbones(pattern)
    elif what is What.suites:
        from .suite.load import list_suites

        names = list_suites()
    else:
        from .registry import DATASETS

        names = DATASETS.names()
    for name in names:
        out_console.print(name, markup=False, highlight=False, soft_wrap=True)


@app.command()
def run(
    suite: str = typer.Option("overhead", "--suite", "-s", help="suite name from suites/ or a path to a .yaml file"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="folder for <suite>.md / .jsonl / .csv"),
    resume: bool = typer.Option(False, "--resume", help="skip cells already stored in OUT/<suite>.jsonl"),
    executor: str = typer.Option("local", "--executor", help="local or dask"),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="dask scheduler address (default: a LocalCluster)"
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="dask: LocalCluster workers (default 2; not with --scheduler)"
    ),
    slot: Optional[str] = typer.Option(
        None, "--slot", help="dask: how timings get a node to themselves: lock (default) or resource"
    ),
    worker_wait: Optional[float] = typer.Option(
        None,
        "--worker-wait",
        help="dask: seconds to wait for a first worker to join "
        "(queued batch jobs; default 600) before the run gives up with nothing run",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no table on stdout"),
    data_root: Optional[str] = typer.Option(
        None, "--data-root", help="dataset folder for accuracy suites (or $ATTNBENCH_DATA_ROOT)"
    ),
    download: bool = typer.Option(False, "--download", help="let torchvision datasets download once (needs internet)"),
    only_backbone: List[str] = typer.Option(
        [], "--backbone", "-b", help="run only these of the suite's backbones (repeatable)"
    ),
    only_module: List[str] = typer.Option(
        [], "--module", "-m", help="run only these of the suite's module labels (repeatable)"
    ),
    add_module: List[str] = typer.Option(
        [],
        "--add-module",
        "-a",
        help="add a registered module (a plugin) to the "
        "suite's modules for this run (repeatable): its rows join the table",
    ),
    only_metric: List[str] = typer.Option(
        [],
        "--metric",
        "-M",
        help="run only these of the suite's metrics (repeatable), e.g. -M params -M macs for the counts alone",
    ),
    latency_from: Optional[Path] = typer.Option(
        None,
        "--latency-from",
        help="accuracy suites: the overhead store whose CPU "
        "latency joins the table (default OUT/overhead.jsonl when it exists)",
    ),
):
    """Run a suite, store every cell as it finishes, write and print the table."""
    from .api import execute, overhead_records, prepare  # the one code path, shared with attnbench.run()

    s, ex = prepare(
        suite,
        out,
        add_modules=add_module,
        only_backbones=only_backbone,
        only_modules=only_module,
        only_metrics=only_metric,
        executor=executor,
        scheduler=scheduler,
        workers=workers,
        slot=slot,
        worker_wait=worker_wait,
        data_root=data_root,
        download=download,
    )
    # Whatever the run prints (a plugin's print, a library's chatter) goes to stderr: stdout is the table's.
    result = execute(
        s,
        out,
        resume,
        ex,
        overhead_records(latency_from, out),
        quiet=quiet,
        console=err_console,
        around=_stdout_to_stderr,
    )
    _summarise(s.name, result, quiet)
    if result.aborted is not None:
        raise result.aborted
    raise typer.Exit(result.exit_code)


def _summarise(name: str, result, quiet: bool) -> None:
    md = result.paths.get("markdown")
    if not quiet and md is not None and md.is_file():
        out_console.print(md.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
    written = ", ".join(str(p) for k, p in result.paths.items() if k != "plot")
    unsupported = f", {result.unsupported} unsupported" if result.unsupported else ""
    err_console.print(
        f"{name}: {result.ok} ok, {result.failed} failed, {result.skipped} skipped{unsupported}, {result.reused} reused "
        f"in {result.wall_s:.1f} s -> {written}",
        markup=False,
        highlight=False,
    )
    from .report.notes import contention_line, precision_line  # lazy: the CLI starts without the report stack

    for line in (contention_line(result.records), precision_line(result.records)):
        if line:
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    for what in result.unwritten:
        err_console.print(
            f"not written: {what}; `attnbench report {result.paths['records']}` rebuilds it", markup=False
        )
    if result.interrupted:
        from .guard.interrupts import NAMES

        _said.append("interrupted")
        err_console.print(
            f"interrupted by {NAMES.get(result.signum, result.signum)}: finished cells are stored and the "
            "table shows them; rerun with --resume to continue",
            markup=False,
        )
    elif result.failed:
        err_console.print(f"{result.failed} cell(s) failed; see the table's notes", markup=False)


def _parse_option(text: str):
    """KEY=VALUE, the value read as (bounded) YAML: reduction=8, stages=[3,4], name=se."""
    from .errors import SuiteError
    from .suite.load import read_yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        _fail(f"option {text!r} is not KEY=VALUE; write e.g. --option reduction=8")
    try:
        return key, read_yaml(value, "--option")
    except SuiteError as exc:
        _fail(f"option {text!r}: the value {exc.problem}; write e.g. -O reduction=8 or -O stages=[3,4]")


def _parse_options(texts: List[str]) -> dict:
    options = {}
    for text in texts:
        key, value = _parse_option(text)
        if key in options:
            _fail(f"option {key!r} is given twice (-O {text}); give it once")
        options[key] = value
    return options


@app.command()
def measure(
    backbone: str = typer.Argument(..., help="timm model name"),
    module: str = typer.Argument("none", help="registry name, or none"),
    input_size: int = typer.Option(224, "--input-size", min=1, help="square input resolution"),
    option: List[str] = typer.Option([], "--option", "-O", help="module option KEY=VALUE (repeatable)"),
    as_: List[str] = typer.Option(
        [],
        "--as",
        help="also count as a peer tool does (repeatable): thop-0.0.23, "
        "thop-0.0.31, thop (0.1.1), ultralytics-thop (2.2.3), ptflops (0.7.5), "
        "ptflops-0.7-aten, ptflops-0.1 (2019), fvcore, conv-fc",
    ),
    pools_as_modules: bool = typer.Option(
        False,
        "--pools-as-modules",
        help="with --as: count x.mean-style global pools as the pooling modules official code uses",
    ),
):
    """Parameters, MACs and memory of one backbone/module pair, straight to the terminal."""
    options = _parse_options(option)
    from .measures.conventions import convention

    try:
        conventions = [convention(name) for name in as_]
    except AttnBenchError as exc:
        _fail(f"--as: {exc}")
    if pools_as_modules and not all(c.hooks for c in conventions):
        from .measures.conventions import CONVENTIONS

        takes = ", ".join(n for n, c in CONVENTIONS.items() if c.hooks)
        _fail(f"--pools-as-modules applies to the pure module-hook conventions ({takes}); drop it or pick one")
    from .core.memory import input_problem

    problem = input_problem(2, (input_size, input_size))  # the saved-memory pass runs batch 2
    if problem:
        _fail(f"--input-size {input_size}: {problem}; give a smaller --input-size")
    with _stdout_to_stderr():
        try:
            model, fc, act, saved = _measure_one(backbone, module, input_size, options)
        except AttnBenchError:
            raise
        except Exception as exc:
            from .guard.cell import is_out_of_memory
            from .harness.execute import error_info

            info = error_info(exc)
            hint = "" if is_out_of_memory(exc) else "; try another --input-size or backbone"
            _fail(
                f"measuring {backbone} + {module} at {input_size}x{input_size} failed: {info['type']}: {info['message']}{hint}",
                1,
            )
    from .attach.backbone import attention_parameters
    from .measures.params import count_params

    where = model.attnbench_attachment
    lines = [
        f"{backbone} + {module} ({where.placement}, {len(where.sites)} sites), input {input_size}x{input_size}",
        f"params {count_params(model):,} (attention {attention_parameters(model):,})",
        f"MACs {fc.total:,} = conv/linear/matmul {fc.conv_linear_matmul:,} + element-wise {fc.elementwise:,} + norm {fc.norm:,}",
        f"  attention {fc.attention:,}; fvcore alone {fc.fvcore:,}; dispatch counter {fc.dispatch_total:,}"
        f" ({'agrees' if fc.counters_agree else 'differs: ' + fc.counter_difference})",
        f"memory traffic {fc.bytes / 1e6:,.1f} MB = read {fc.bytes_read / 1e6:,.1f} (weights {fc.bytes_params / 1e6:,.1f}) "
        f"+ written {fc.bytes_written / 1e6:,.1f}, no cache between operators; {fc.operators:,} operator calls "
        f"({fc.operators_no_traffic:,} move no data: views, allocations); {fc.intensity:.2f} MACs/byte",
        f"  attention {fc.bytes_attention / 1e6:,.2f} MB, {fc.operators_attention:,} operator calls",
        f"unhandled operators: {fc.unhandled or 'none'}",
        f"activations {int(act.value):,} elements/image (fvcore's conv/linear part {int(act.stats['fvcore']):,}); "
        f"saved for backward {saved.value / 2**20:.2f} MiB/image (batch 2, parameters excluded; per image at this "
        f"batch: BatchNorm's saved statistics do not scale with it, {saved.stats['saved_bytes'] / 2**20:.2f} MiB per batch)",
    ]
    if conventions:
        import torch

        from .errors import Unsupported
        from .measures.conventions import count_as

        x = torch.randn(1, 3, input_size, input_size)
        for conv in conventions:
            try:
                c = count_as(model, x, conv.name, pools_as_modules=pools_as_modules)
            except Unsupported as exc:  # a layer the tool counts by a rule attnbench does not replicate
                lines.append(f"as {conv.name}: not counted: {exc}")
                continue
            lines.append(
                f"as {conv.name} ({conv.tool}{', pools as modules' if pools_as_modules else ''}): {c.ops:,} ops "
                f"= {c.ops / 1e9:.4g} G = {c.ops / 2**30:.4g} G(2^30); params {c.params:,} = "
                f"{c.params / 1e6:.4g} M = {c.params / 2**20:.4g} M(2^20)"
            )
    out_console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _measure_one(backbone: str, module: str, input_size: int, options: dict):
    import torch

    from .attach.backbone import build
    from .measures.flops import count_flops
    from .measures.memory import measure_activations, measure_saved_memory

    model = build(backbone, module, input_size=input_size, **options)
    fc = count_flops(model, torch.randn(1, 3, input_size, input_size))
    act = measure_activations(model, torch.randn(1, 3, input_size, input_size))
    saved = measure_saved_memory(model, torch.randn(2, 3, input_size, input_size))  # batch 2: BatchNorm must train
    return model, fc, act, saved


@app.command()
def check(
    target: str = typer.Argument(..., help="registered name, pkg.module:Class or path/file.py:Class"),
    backbone: str = typer.Option(
        "resnet18", "--backbone", "-b", help="backbone to attach it to ('' = the module alone)"
    ),
    option: List[str] = typer.Option([], "--option", "-O", help="module option KEY=VALUE (repeatable)"),
    channels: int = typer.Option(64, "--channels", help="channels for the module-alone checks"),
    input_size: int = typer.Option(224, "--input-size", help="input resolution for the backbone checks"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds each check step may run (a hung forward fails)"),
):
    """Check a module against the plugin contract, in seconds, before any suite (exit 0: nothing failed,
    1: the module breaks the contract, 2: a bad command-line value)."""
    from .check.checklist import render_check, run_check

    options = _parse_options(option)
    with _stdout_to_stderr():
        report = run_check(target, backbone, options, channels=channels, input_size=input_size, timeout=timeout)
    out_console.print(render_check(report), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code)


@app.command()
def validate(out: Path = typer.Option(Path("results"), "--out", "-o", help="folder for validate.md")):
    """Published figures (SENet, CBAM, ECA, ...) beside the harness's own numbers."""
    from .core.files import write_atomic
    from .records.store import check_output_dir
    from .validate import render_validate
    from .validate import validate as run_validate

    check_output_dir(out)  # before the minutes of building and counting, not after
    rows = run_validate()
    text = render_validate(rows)
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)
    try:
        write_atomic(out / "validate.md", text)
    except OSError as exc:
        _fail(f"could not write {out / 'validate.md'}: {exc.strerror or exc}; the table above is complete", 1)
    raise typer.Exit(1 if any(r["status"] == "MISMATCH" for r in rows) else 0)


def _records_from(path: Path):
    from .records.store import Store

    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if len(files) != 1:
            _fail(f"{p} holds {len(files)} result stores; name one of: {', '.join(f.name for f in files) or 'none'}")
        p = files[0]
    if not p.is_file():
        _fail(f"no result store at {p}; give the .jsonl written by `attnbench run`")
    try:
        return p, Store(p).latest()
    except OSError as exc:
        _fail(f"cannot read {p}: {exc.strerror or exc}")


class Format(str, Enum):
    markdown = "markdown"
    latex = "latex"
    csv = "csv"
    json = "json"


FORMAT_HELP = (
    "what to print: markdown (the table), latex (booktabs tables), csv or json (one row per cell, with "
    "every Δ and its interval); the same content in each"
)


def _print_exactly(text: str) -> None:
    """LaTeX, CSV and JSON byte for byte (rich's console would read ':name:' in a label as an emoji)."""
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def report(
    results: Path = typer.Argument(..., help="a <suite>.jsonl store (or a folder holding one)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the .md/.csv (default: beside the store)"),
    latency_from: Optional[Path] = typer.Option(
        None,
        "--latency-from",
        help="accuracy stores: overhead store for the latency column (default: overhead.jsonl beside the store)",
    ),
    fmt: Format = typer.Option(Format.markdown, "--format", help=FORMAT_HELP + "; the files written do not change"),
):
    """Rebuild the tables from a result store alone."""
    from .api import overhead_records
    from .records.store import check_output_dir
    from .report import write_outputs_safely

    path, records = _records_from(results)
    if not records:
        _fail(f"{path} holds no records")
    target = out or path.parent
    check_output_dir(target, "--out" if out else "the store's folder (no --out)")
    overhead = overhead_records(latency_from, path.parent)
    paths, unwritten = write_outputs_safely(records, target, path.stem, overhead)
    if unwritten:
        _fail(f"not written: {', '.join(unwritten)} in {target}; give --out a folder with room", 1)
    if fmt is Format.markdown:
        out_console.print(paths["markdown"].read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
    else:
        from .report.formats import render_report

        _print_exactly(render_report(records, path.stem, fmt.value, overhead))


@app.command()
def compare(
    a: Path = typer.Argument(..., help="first result store (the reference)"),
    b: Path = typer.Argument(..., help="second result store (the candidate)"),
    fail_above: Optional[float] = typer.Option(
        None, "--fail-above", help="exit 1 when a cost got worse by more than PCT % and beyond its noise band (for CI)"
    ),
    fmt: Format = typer.Option(Format.markdown, "--format", help=FORMAT_HELP),
):
    """Show the Δ between two runs, cell by cell, with the noise band of every timing.

    With --fail-above it is a CI gate: exit 1 on a regression, and also whenever it cannot vouch for the
    candidate (other suite or settings, no shared cell, a cell failed or missing in the candidate)."""
    import math

    from .report.compare import compare_rows, render_compare_rows
    from .report.gate import comparability_problems, gate

    if fail_above is not None and not (math.isfinite(fail_above) and fail_above >= 0):
        _fail(f"--fail-above {fail_above}: give a percentage >= 0, e.g. --fail-above 5")
    pa, ra = _records_from(a)
    pb, rb = _records_from(b)
    for path, recs in ((pa, ra), (pb, rb)):
        if not recs:
            _fail(f"{path} holds no records; compare needs a store written by `attnbench run`")
    rows = compare_rows(ra, rb)
    if fmt is Format.markdown:
        out_console.print(
            render_compare_rows(rows, str(pa), str(pb), fail_above), markup=False, highlight=False, soft_wrap=True
        )
    else:
        from .report.formats import render_compare_as

        _print_exactly(render_compare_as(rows, str(pa), str(pb), fmt.value, fail_above))
    if fail_above is None:
        for problem in comparability_problems(ra, rb, rows)[:1]:
            err_console.print(f"warning: {problem}", markup=False, highlight=False, soft_wrap=True)
        return
    why = gate(ra, rb, rows, fail_above)
    if why:
        _fail(why, 1)


def _usage_error_types() -> tuple:
    """Click's exception classes, in every copy that may be loaded: typer >= 0.26 vendors its own
    click (``typer._click``), whose exceptions are not ``click.ClickException``s."""
    import importlib

    found = []
    for name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += [getattr(mod, cls) for cls in ("ClickException", "Abort") if hasattr(mod, cls)]
    return tuple(found)


def _report_usage_error(exc: BaseException) -> int:
    """One line naming the problem, then the usage and the help hint; never a traceback."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare `attnbench` / `attnbench list`
        err_console.print(ctx.get_help(), markup=False, highlight=False, soft_wrap=True)
        return 2
    if type(exc).__name__ == "Abort":
        err_console.print("aborted", markup=False)
        return 130
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    if ctx is not None:
        err_console.print(ctx.get_usage(), markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"Try '{ctx.command_path} --help' for help.", markup=False, highlight=False)
    else:
        err_console.print("Try 'attnbench --help' for help.", markup=False, highlight=False)
    code = getattr(exc, "exit_code", 2)
    return 2 if code in (None, 0, 1) and ctx is not None else (code or 1)


def main(argv: Optional[List[str]] = None) -> None:
    """The console script: every user error exits 2 with one line, an aborted run 3; Ctrl-C exits 130 and
    SIGTERM 143, each with one line (a run also with the table of what it stored)."""
    from .core.textio import degrade_streams
    from .guard import interrupts

    degrade_streams()  # a non-UTF-8 locale or PYTHONIOENCODING=ascii: symbols degrade to ASCII, never a traceback
    warnings.filterwarnings("ignore", category=FutureWarning)
    _said.clear()
    with interrupts.handled(), _one_line_warnings():
        try:
            code = _dispatch(argv)
        except KeyboardInterrupt:  # before typer took over (loading click's error types)
            code = 130
        if code == 130:  # typer turns every KeyboardInterrupt (ours: SIGINT or SIGTERM) into exit 130
            signum = interrupts.received[0] if interrupts.received else 2
            code = 128 + signum
            if not _said:
                err_console.print(
                    f"interrupted by {interrupts.NAMES.get(signum, signum)}", markup=False, highlight=False
                )
    sys.exit(code)


def _dispatch(argv: Optional[List[str]]) -> int:
    """Run the command; print the one line an error ends with and return the exit status."""
    from .errors import exit_status

    usage_errors = _usage_error_types()
    try:
        code = app(args=argv, prog_name="attnbench", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except AttnBenchError as exc:  # every family, one line; errors.exit_status is the one mapping
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exit_status(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except usage_errors as exc:
        return _report_usage_error(exc)
    except Exception as exc:
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):  # the vendored click's Exit
            return exc.exit_code
        raise


@contextlib.contextmanager
def _one_line_warnings():
    """attnbench's own warnings (store lines skipped, a plugin that failed to load) as one line each."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if getattr(category, "__module__", "").startswith("attnbench"):
            err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    main()
