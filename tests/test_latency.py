"""Timing code paths: what runs, in which order, under which settings (values are never asserted:
speed belongs in benchmarks); GPU tests skip without CUDA."""

import pytest
import torch
from torch import nn

from attnbench import build
from attnbench.guard.threads import fixed_threads
from attnbench.measures.timing.network import measure_latency, measure_peak_memory
from attnbench.measures.timing.schedule import summarize
from attnbench.measures.timing.settings import LatencySettings

FAST = dict(input_size=(32, 32), warmup=1, rounds=2, min_time=0.0, min_iters=2, threads=1)
ONE_CALL = dict(input_size=(8, 8), warmup=1, min_time=0.0, min_iters=1, threads=1)  # one call per model per round


class Logged(nn.Module):
    """A tiny classifier that appends its label to a shared log on every forward."""

    def __init__(self, label, log):
        super().__init__()
        self.label, self.log = label, log
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        self.log.append(self.label)
        return self.fc(x.mean((2, 3)))


class Probe(nn.Module):
    """Records what the harness actually ran: the dtype and memory layout reaching the middle of
    the network, and the grad/inference mode it ran in."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(
            (
                x.dtype,
                x.is_contiguous(memory_format=torch.channels_last),
                torch.is_inference_mode_enabled(),
                self.training,
            )
        )
        return x


def _probed_model():
    probe = Probe()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), probe, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return model, probe


def test_summary_statistics_by_hand():
    s = summarize([0.010, 0.011, 0.012, 0.013, 0.030], batch_size=4, threshold=0.10)
    assert s["median_ms"] == pytest.approx(12.0) and s["iqr_ms"] == pytest.approx(2.0) and s["runs"] == 5
    assert s["images_per_s"] == pytest.approx(4 / 0.012) and s["unstable"] is True  # 2/12 > 10%
    assert summarize([0.01] * 4, 1, 0.1)["unstable"] is False


def test_rounds_rotate_the_order():
    log = []
    models = {k: Logged(k, log) for k in "abc"}
    out = measure_latency(models, LatencySettings(**ONE_CALL, rounds=4))
    warmup, timed = log[:3], log[3:]
    assert warmup == ["a", "b", "c"]
    assert [timed[i : i + 3] for i in range(0, 12, 3)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert {k: m.stats["runs"] for k, m in out.items()} == {"a": 4, "b": 4, "c": 4}


def test_failing_models_are_dropped_the_others_finish():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    class LateBoom(Logged):  # passes warm-up, fails on its second timed call
        def forward(self, x):
            if self.log.count(self.label) == 2:  # warm-up and round 1 done
                raise RuntimeError("late boom")
            return super().forward(x)

    log, failed = [], {}
    models = {"a": Logged("a", log), "b": Boom(), "c": LateBoom("c", log), "d": Logged("d", log)}
    out = measure_latency(
        models, LatencySettings(**ONE_CALL, rounds=3), on_error=lambda label, exc: failed.setdefault(label, str(exc))
    )
    assert failed == {"b": "boom", "c": "late boom"} and set(out) == {"a", "d"}
    # warm-up a c d; round 1 (cycle 0): a c d; round 2, cycle 1 (rotated: c d a): c fails first, the broken cycle
    # is dropped for everyone and the round goes on over [a, d] (cycle 2: a d); round 3 (cycle 3: d a)
    assert log == list("acd") + list("acd") + list("ad") + list("da")
    assert out["a"].stats["runs"] == 3 and out["d"].stats["runs"] == 3
    assert [len(r) for r in out["a"].stats["rounds_ms"]] == [1, 1, 1]  # pairs stay aligned round by round
    assert all(m.metric == "latency_cpu" and m.unit == "ms" and m.settings["mode"] == "eval" for m in out.values())


def test_defaults_run_float32_contiguous_under_inference_mode():
    model, probe = _probed_model()
    measure_latency({"m": model}, LatencySettings(**FAST))
    assert set(probe.seen) == {(torch.float32, False, True, False)}  # 1 warm-up + 2 rounds x 2 calls
    assert len(probe.seen) == 5


def test_train_step_channels_last_and_bf16_autocast_on_cpu():
    model, probe = _probed_model()
    s = LatencySettings(**FAST, train=True, channels_last=True, amp="bf16", batch_size=2)
    m = measure_latency({"m": model}, s)["m"]
    # the conv ran under bf16 autocast on a channels_last input, with autograd on and the model in train mode
    assert set(probe.seen) == {(torch.bfloat16, True, False, True)} and len(probe.seen) == 5
    assert model[4].weight.grad is not None  # a training step ran backward
    assert m.metric == "train_step_cpu" and m.settings["amp"] == "bf16" and m.settings["channels_last"]


def test_thread_count_is_set_for_the_run_and_restored_after():
    seen = []

    class Threads(Logged):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return super().forward(x)

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    m = measure_latency({"t": Threads("t", [])}, LatencySettings(**dict(ONE_CALL, threads=target), rounds=1))["t"]
    assert set(seen) == {target} and m.settings["threads"] == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with fixed_threads(target) as n:
            assert n == torch.get_num_threads() == target
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with fixed_threads(None) as n:
        assert n == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_paths_refuse_cleanly_without_cuda():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        measure_latency({"a": build("resnet18")}, LatencySettings(**FAST), device="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        measure_peak_memory(build("resnet18"), LatencySettings(**FAST))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp,channels_last,train", [(None, False, False), ("bf16", True, False), ("fp16", True, True)])
def test_gpu_latency_memory_and_train_step(amp, channels_last, train):
    s = LatencySettings(
        input_size=(224, 224),
        batch_size=8,
        warmup=3,
        rounds=3,
        min_time=0.05,
        amp=amp,
        channels_last=channels_last,
        train=train,
    )
    models = {"none": build("resnet50"), "se": build("resnet50", "se")}
    out = measure_latency(models, s, device="cuda")
    assert set(out) == {"none", "se"}
    assert out["se"].metric == ("train_step_gpu" if train else "latency_gpu") and out["se"].value > 0
    mem = measure_peak_memory(build("resnet50", "se"), s)
    assert mem.metric == "memory_gpu" and mem.value > 0
