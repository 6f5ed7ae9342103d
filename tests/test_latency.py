"""Timing code paths (values are never asserted: speed belongs in benchmarks); GPU tests skip without CUDA."""
import pytest
import torch

from attnbench import build
from attnbench.measures.latency import LatencySettings, measure_latency, measure_peak_memory, summarize

FAST = dict(input_size=(32, 32), warmup=1, rounds=2, min_time=0.0, min_iters=2, threads=1)


def test_summary_statistics_by_hand():
    s = summarize([0.010, 0.011, 0.012, 0.013, 0.030], batch_size=4, threshold=0.10)
    assert s["median_ms"] == pytest.approx(12.0) and s["iqr_ms"] == pytest.approx(2.0) and s["runs"] == 5
    assert s["images_per_s"] == pytest.approx(4 / 0.012) and s["unstable"] is True  # 2/12 > 10%
    assert summarize([0.01] * 4, 1, 0.1)["unstable"] is False


def test_interleaved_rounds_and_failure_isolation():
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    failed = {}
    out = measure_latency({"a": build("resnet18"), "b": Boom(), "c": build("resnet18", "se")},
                          LatencySettings(**FAST), on_error=lambda label, exc: failed.setdefault(label, str(exc)))
    assert set(out) == {"a", "c"} and failed == {"b": "boom"}
    for m in out.values():
        assert m.metric == "latency_cpu" and m.unit == "ms" and m.stats["runs"] == 4  # 2 rounds x 2 calls
        assert m.settings["threads"] == 1 and m.settings["mode"] == "eval"


def test_train_step_channels_last_and_bf16_autocast_on_cpu():
    s = LatencySettings(**FAST, train=True, channels_last=True, amp="bf16", batch_size=2)
    out = measure_latency({"se": build("resnet18", "se")}, s)
    m = out["se"]
    assert m.metric == "train_step_cpu" and m.settings["amp"] == "bf16" and m.settings["channels_last"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_paths_refuse_cleanly_without_cuda():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        measure_latency({"a": build("resnet18")}, LatencySettings(**FAST), device="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        measure_peak_memory(build("resnet18"), LatencySettings(**FAST))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp,channels_last,train", [(None, False, False), ("bf16", True, False), ("fp16", True, True)])
def test_gpu_latency_memory_and_train_step(amp, channels_last, train):
    s = LatencySettings(input_size=(224, 224), batch_size=8, warmup=3, rounds=3, min_time=0.05,
                        amp=amp, channels_last=channels_last, train=train)
    models = {"none": build("resnet50"), "se": build("resnet50", "se")}
    out = measure_latency(models, s, device="cuda")
    assert set(out) == {"none", "se"}
    assert out["se"].metric == ("train_step_gpu" if train else "latency_gpu") and out["se"].value > 0
    mem = measure_peak_memory(build("resnet50", "se"), s)
    assert mem.metric == "memory_gpu" and mem.value > 0
