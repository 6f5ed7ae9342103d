"""Run a built model under a deployment runtime, checked against eager before anything is timed.

A latency measured under ONNX Runtime or OpenVINO only means something if the runtime computes the
same function as the PyTorch model: an exporter that drops a branch, maps an op differently or runs in
bf16 would otherwise be timed as if it worked. So :func:`prepare` builds the runtime's callable, runs
it once, and compares that output with eager's elementwise, ``|out - ref| <= ATOL + RTOL * |ref|``
(fp32), raising :class:`OutputMismatch` beyond it.

Choices, and why:

* ``compile``: ``torch.compile`` with backend inductor, mode ``"default"``, ``dynamic=False``.
  ``"reduce-overhead"`` (CUDA graphs) reuses its output buffers between calls and ``"max-autotune"``
  spends minutes per model on autotuning; ``"default"`` times the generated kernels, nothing else.
  Dynamo keeps its compiled graphs, and its ``recompile_limit`` (8), per *code object*, and every
  module call enters through the same one: the ninth model compiled in a process would silently run
  eager. Each prepared model therefore gets an entry function with a code object of its own, and
  :func:`prepare` fails when the first call captured no graph. Inductor's CPU kernels fix their
  OpenMP thread count when generated, so compilation runs at ``threads``; its on-disk cache makes a
  second preparation of the same model faster (``prepare_s`` is what this one took).
* ``onnxruntime``: ``torch.onnx.export(dynamo=True)`` (torch.export-based, the default since torch
  2.9; the TorchScript exporter is deprecated) at opset ``ONNX_OPSET`` = 20, torch's default, pinned
  so a torch upgrade cannot change the graph silently. The session runs sequentially with
  ``intra_op_num_threads=threads``, one inter-op thread, ``ORT_ENABLE_ALL`` and
  ``session.force_spinning_stop=1``: timings alternate between sessions call by call, and a session whose
  threads kept spinning after its call returned would steal the next session's cores.
* ``openvino``: ``openvino.convert_model`` (a TorchScript trace) compiled for ``CPU`` with
  ``INFERENCE_NUM_THREADS=threads``, ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT=f32``:
  on CPUs with AMX/avx512-bf16 OpenVINO would otherwise run bf16 by default.

``prepare_s`` is everything before the first steady-state call: export or compilation, session
creation and the first call (where lazy compilation happens); for eager it is one forward.
onnx, onnxscript, onnxruntime and openvino are imported only when their runtime is asked for.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ..core.metrics import RUNTIMES  # the suite axis' names live with the metric table
from ..errors import AttnBenchError, ConversionFailed, ModuleDoesNotFit, OutputMismatch, RuntimeMissing, Unsupported  # noqa: F401 (raised here)
from ..guard.cell import require_finite
from ..guard.threads import fixed_threads

# fp32 tolerance of a runtime's output against eager, elementwise: |out - ref| <= ATOL + RTOL * |ref|.
# Reordered fp32 sums (other conv algorithms, fused kernels) differ by ~1e-7 on resnet50's random-init
# outputs (|ref| <= 0.15) and by <= 2.5e-5 with logits scaled to |ref| ~ 30: at most 6% of this bound
# under ONNX Runtime and OpenVINO. A different function (a dropped or changed branch) or bf16
# arithmetic (~4e-3 relative per op) lands beyond it.
ATOL, RTOL = 1e-4, 1e-3

ONNX_OPSET = 20
COMPILE_BACKEND, COMPILE_MODE = "inductor", "default"

_INSTALL_HINTS = {
    "onnx": "pip install 'attnbench[onnx]'",
    "onnxscript": "pip install 'attnbench[onnx]'",
    "onnxruntime": "pip install 'attnbench[onnx]'",
    "openvino": "pip install 'attnbench[openvino]'",
    "triton": "pip install triton",
}


@dataclass(frozen=True)
class Prepared:
    """A runtime's timed call on the input given to :func:`prepare`, checked against eager."""

    step: Callable[[], Any]  # one inference call; returns a torch.Tensor (a tuple for several outputs)
    prepare_s: float  # export / compile / session creation, including the first call
    info: Dict[str, Any]  # JSON-able: runtime, version, its settings, tolerance, max_abs_diff


def check_available(runtime: str, device: str = "cpu") -> None:
    """Raise RuntimeMissing when ``runtime`` cannot run on ``device`` here (ValueError for an unknown
    name, Unsupported for openvino on cuda); cheap enough to call while a suite is checked."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    cuda = torch.device(device).type == "cuda"
    if not cuda and runtime == "tensorrt":
        raise Unsupported("tensorrt (ONNX Runtime's TensorRT provider) runs on CUDA only; time it with latency_gpu")
    if cuda and runtime == "openvino":
        raise Unsupported(
            "openvino runs on the CPU here; use device cpu for runtime openvino, or another runtime on cuda"
        )
    if cuda and not torch.cuda.is_available():
        raise RuntimeMissing(
            f"runtime {runtime} on {device}: torch sees no CUDA device; use device cpu or a machine with a GPU"
        )
    if runtime == "compile":
        if cuda:
            _require("triton")
        elif not _cpp_compiler():
            raise RuntimeMissing(
                "torch.compile's inductor needs a C++ compiler for the CPU and found none "
                "(g++, c++, clang++ or $CXX); install one, e.g. apt-get install g++"
            )
    elif runtime == "onnxruntime":
        _require("onnx")
        _require("onnxscript")  # torch.onnx.export(dynamo=True) needs it
        ort = _require("onnxruntime")
        if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeMissing(
                f"onnxruntime has no CUDAExecutionProvider (it has "
                f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu "
                "in place of onnxruntime"
            )
    elif runtime == "tensorrt":
        for package in ("onnx", "onnxscript"):
            _require(package)
        ort = _require("onnxruntime")
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise RuntimeMissing(
                f"onnxruntime has no TensorrtExecutionProvider (it has "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu and TensorRT"
            )
    elif runtime == "openvino":
        _require("openvino")


def prepare(runtime: str, model: nn.Module, x: torch.Tensor, threads: int, device: str = "cpu") -> Prepared:
    """Build ``runtime``'s call of ``model`` on ``x``, run it once and check it against eager.

    Raises RuntimeMissing, ConversionFailed (export/compile failed), NonFiniteOutput (eager or the
    runtime gives NaN/inf) or OutputMismatch. The model is put in eval mode; model and input are
    expected on ``device``. For eager and compile the caller fixes torch's thread count while timing
    (as it does for eager); onnxruntime and openvino carry ``threads`` in their own settings."""
    check_available(runtime, device)
    threads = int(threads) if threads else torch.get_num_threads()
    model = model.eval()
    what = type(model).__name__
    with fixed_threads(threads):
        with torch.inference_mode():
            reference = model(x)
        require_finite(reference, f"{what} (eager reference for runtime {runtime})")
        t0 = time.perf_counter()
        step, info = _BUILDERS[runtime](model, x, threads, device, reference)
        out = step()
        prepare_s = time.perf_counter() - t0
    require_finite(out, f"{what} under runtime {runtime}")
    max_abs_diff = _compare(runtime, what, out, reference)
    info = {
        "runtime": runtime,
        **info,
        "device": str(device),
        "threads": threads,
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "max_abs_diff": max_abs_diff,
    }
    return Prepared(step=step, prepare_s=prepare_s, info=info)


# --- builders: (model, x, threads, device, reference) -> (step, info) -------------------------------


def _eager(model, x, threads, device, reference):
    def step():
        with torch.inference_mode():
            return model(x)

    return step, {"version": torch.__version__}


_compiled_ids = itertools.count()


def compile_model(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``torch.compile`` of ``model`` (inductor, default mode, static shapes) entered through a code object
    of its own, so its own dynamo cache and recompile budget (see the module docstring): the ninth model
    compiled in one process is compiled too, not silently run eager. Compilation happens at the first call."""

    def run_model(inp):
        return model(inp)

    run_model.__code__ = run_model.__code__.replace(co_name=f"attnbench_compiled_{next(_compiled_ids)}")
    return torch.compile(run_model, backend=COMPILE_BACKEND, mode=COMPILE_MODE, dynamic=False)


def _compile(model, x, threads, device, reference):
    from torch._dynamo.utils import counters

    compiled = compile_model(model)
    graphs_before = counters["stats"]["unique_graphs"]
    breaks_before = sum(counters["graph_break"].values())
    try:
        with torch.inference_mode():
            compiled(x)  # compilation happens here; prepare() times it and calls step() once more
    except Exception as exc:
        raise ConversionFailed(
            f"runtime compile: torch.compile failed for {type(model).__name__}: "
            f"{_first_line(exc)}; time this model under runtime eager"
        ) from exc
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    if graphs == 0:
        raise ConversionFailed(
            f"runtime compile: torch.compile captured no graph of {type(model).__name__}, so it "
            "would be timed as eager; run with TORCH_LOGS=recompiles,graph_breaks to see why"
        )

    def step():
        with torch.inference_mode():
            return compiled(x)

    return step, {
        "version": torch.__version__,
        "backend": COMPILE_BACKEND,
        "mode": COMPILE_MODE,
        "dynamic": False,
        "graphs": int(graphs),
        "graph_breaks": int(sum(counters["graph_break"].values()) - breaks_before),
    }


def _tensorrt(model, x, threads, device, reference):
    """ONNX Runtime with its TensorRT provider first (CUDA for what TensorRT does not take)."""
    return _onnxruntime(model, x, threads, device, reference, provider="TensorrtExecutionProvider")


def _onnxruntime(model, x, threads, device, reference, provider: str = "CUDAExecutionProvider"):
    ort, onnx, onnxscript = _require("onnxruntime"), _require("onnx"), _require("onnxscript")
    folder = tempfile.TemporaryDirectory(prefix="attnbench-onnx-")  # kept alive by step(), removed with it
    path = os.path.join(folder.name, "model.onnx")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's advice; the output check below is what counts
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=ONNX_OPSET, verbose=False)
    except Exception as exc:
        folder.cleanup()
        raise ConversionFailed(
            f"runtime onnxruntime: torch.onnx.export failed for {type(model).__name__}: "
            f"{_first_line(exc)}; time this model under another runtime"
        ) from exc
    export_s = time.perf_counter() - t0

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Interleaved sessions: ORT's pool spins after Run() returns, and with another model's call next on the same
    # cores that spin stole them (measured: ResNet-18 8 -> 21 ms per call when three sessions alternate); stopping
    # the spin when a call returns costs ~3% on back-to-back calls of one session and removes the interference.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        # ORT on torch's current stream, so the timer's CUDA events enclose its kernels.
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        stream = {"device_id": index, "user_compute_stream": str(torch.cuda.current_stream(index).cuda_stream)}
        providers = [(p, dict(stream)) for p in dict.fromkeys((provider, "CUDAExecutionProvider"))]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:
        raise ConversionFailed(
            f"runtime onnxruntime cannot load the exported {type(model).__name__}: "
            f"{_first_line(exc)}; time this model under another runtime"
        ) from exc
    if cuda and session.get_providers()[0] != provider:
        raise RuntimeMissing(
            f"onnxruntime could not start its {provider} (it runs on "
            f"{session.get_providers()[0]}); check the CUDA, cuDNN (and TensorRT) versions onnxruntime-gpu needs"
        )
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    info = {
        "version": ort.__version__,
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": ONNX_OPSET,
        "onnx_version": onnx.__version__,
        "onnxscript_version": onnxscript.__version__,
        "export_s": round(export_s, 3),
        "provider": session.get_providers()[0],
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "force_spinning_stop": True,
        "graph_optimization": "ORT_ENABLE_ALL",
    }

    if cuda:  # inputs and outputs stay on the GPU: bound to torch's buffers, no host copies
        x_bound = x.contiguous()
        outs = [r.new_empty(r.shape).contiguous() for r in _tensors(reference)]
        binding = session.io_binding()
        binding.bind_input(input_name, "cuda", index, _numpy_dtype(x_bound), tuple(x_bound.shape), x_bound.data_ptr())
        for name, buf in zip(output_names, outs):  # the same buffers every call: each call overwrites the last
            binding.bind_output(name, "cuda", index, _numpy_dtype(buf), tuple(buf.shape), buf.data_ptr())

        def step():
            session.run_with_iobinding(binding)
            _keep = (folder, x_bound)  # noqa: F841  (the files and the bound input live as long as the step)
            return outs[0] if len(outs) == 1 else tuple(outs)

        return step, info

    feed = {input_name: x.detach().contiguous().numpy()}

    def step():
        _keep = folder  # noqa: F841
        results = session.run(output_names, feed)
        tensors = [torch.from_numpy(r) for r in results]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    return step, info


def _openvino(model, x, threads, device, reference):
    ov = _require("openvino")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
            ov_model = ov.convert_model(model, example_input=x)
    except Exception as exc:
        raise ConversionFailed(
            f"runtime openvino: openvino.convert_model failed for {type(model).__name__}: "
            f"{_first_line(exc)}; time this model under another runtime"
        ) from exc
    convert_s = time.perf_counter() - t0
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    try:
        compiled = ov.Core().compile_model(ov_model, "CPU", config)
    except Exception as exc:
        raise ConversionFailed(
            f"runtime openvino cannot compile the converted {type(model).__name__} for its CPU "
            f"plugin: {_first_line(exc)}; time this model under another runtime"
        ) from exc
    request = compiled.create_infer_request()
    feed = {0: x.detach().contiguous().numpy()}
    properties = {}
    for key in (
        "INFERENCE_NUM_THREADS",
        "NUM_STREAMS",
        "PERFORMANCE_HINT",
        "INFERENCE_PRECISION_HINT",
        "ENABLE_CPU_PINNING",
        "EXECUTION_DEVICES",
    ):
        try:
            properties[key] = _jsonable(compiled.get_property(key))
        except Exception:  # a property this OpenVINO version does not report
            pass

    def step():
        results = request.infer(feed, share_inputs=True, share_outputs=False)
        tensors = [torch.from_numpy(results[i]) for i in range(len(compiled.outputs))]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    return step, {
        "version": ov.get_version(),
        "converter": "openvino.convert_model",
        "convert_s": round(convert_s, 3),
        "ov_device": "CPU",
        "properties": properties,
    }


_BUILDERS = {
    "eager": _eager,
    "compile": _compile,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "tensorrt": _tensorrt,
}


# --- helpers ----------------------------------------------------------------------------------------


def _require(package: str):
    """Import ``package`` or raise RuntimeMissing with its install hint."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(package, f"pip install {package}")
        if isinstance(exc, ModuleNotFoundError) and exc.name in (package, None):
            raise RuntimeMissing(f"{package} is not installed; {hint}") from exc
        raise RuntimeMissing(f"{package} cannot be imported ({_first_line(exc)}); {hint}") from exc


def _cpp_compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return ""


def _numpy_dtype(t: torch.Tensor):
    import numpy as np

    return np.dtype(str(t.dtype).removeprefix("torch."))  # torch.float32 -> float32


def _tensors(output) -> List[torch.Tensor]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def _compare(runtime: str, what: str, out, reference) -> float:
    """Largest |out - ref| over all outputs; OutputMismatch when any element is beyond ATOL + RTOL*|ref|."""
    outs, refs = _tensors(out), _tensors(reference)
    if len(outs) != len(refs):
        raise OutputMismatch(
            f"runtime {runtime} gives {len(outs)} outputs for {what}, eager gives {len(refs)}; "
            "the exported graph returns something else"
        )
    worst = 0.0
    for i, (o, r) in enumerate(zip(outs, refs)):
        o = torch.as_tensor(o).to(r.device)
        if tuple(o.shape) != tuple(r.shape):
            raise OutputMismatch(
                f"runtime {runtime} gives output {i} of {what} shape {tuple(o.shape)}, eager "
                f"{tuple(r.shape)}; the exported graph computes something else"
            )
        o, r = o.double(), r.double()
        diff = (o - r).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
        if not bool((diff <= ATOL + RTOL * r.abs()).all()):
            raise OutputMismatch(
                f"runtime {runtime} differs from eager on {what}: max abs diff {worst:.3g} beyond "
                f"|out - ref| <= {ATOL:g} + {RTOL:g}*|ref|; it computes a different function "
                "(an export- or compile-only branch, an op mapped differently, reduced precision)"
            )
    return worst


def _first_line(exc: BaseException) -> str:
    """The root cause of ``exc`` on one line: the innermost chained exception (torch.onnx wraps its
    cause twice), colour codes and OpenVINO's ``Check '...' failed at file:line`` prefix removed."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Check '")]
    text = " ".join(lines) or type(exc).__name__
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(exc).__name__}: {text}"


def _jsonable(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_string"):  # openvino.Type: "f32"
        return value.to_string()
    return str(value)
