"""The dispatch-level counter: agreement with the traced counter on every registry entry, and
training-step MACs worked out by hand."""

import pytest
import torch
from torch import nn

import attnbench
from attnbench import build, count_flops
from attnbench.attach.backbone import AttentionSlot
from attnbench.harness.execute import error_info
from attnbench.measures.macs_dispatch import count_train_macs, measure_train_macs


def loss_macs(n, classes, positions=1):
    """cross-entropy: log_softmax (1/element) + nll pick (1/target), and the same two again in backward."""
    return 2 * (n * positions * classes + n * positions)


def test_train_macs_of_a_linear_layer_by_hand():
    n, i, o = 4, 5, 3
    mc = count_train_macs(nn.Linear(i, o), torch.randn(n, i))
    # forward N*in*out (bias folded in); backward: grad-weight N*in*out, grad-bias a reduction over
    # the (N, out) gradient (1 per element); no grad-input (the input does not require grad)
    assert mc.total == n * i * o + n * i * o + n * o + loss_macs(n, o) == 164
    assert mc.forward == n * i * o + n * o + n and mc.conv_linear_matmul == 2 * n * i * o
    assert mc.unhandled == {}
    with_input_grad = count_train_macs(nn.Linear(i, o), torch.randn(n, i, requires_grad=True))
    assert with_input_grad.total == mc.total + n * i * o  # + grad-input


def test_train_macs_of_a_conv_layer_by_hand():
    n, ci, co, k, h = 2, 2, 3, 3, 5
    ho = h - k + 1  # 3x3 outputs, no padding
    fwd = n * ho * ho * co * ci * k * k  # = 972
    mc = count_train_macs(nn.Conv2d(ci, co, k), torch.randn(n, ci, h, h))
    # the loss treats the (N, C_out, 3, 3) output as per-position logits: 18 targets of 3 classes
    assert mc.total == fwd + fwd + n * co * ho * ho + loss_macs(n, co, ho * ho) == 2142  # fwd, grad-w, grad-bias
    with_input_grad = count_train_macs(nn.Conv2d(ci, co, k), torch.randn(n, ci, h, h, requires_grad=True))
    assert with_input_grad.total == mc.total + fwd == 3114


def test_train_macs_measurement_leaves_the_model_untouched():
    model = build("resnet18", "se", input_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure_train_macs(model, torch.randn(2, 3, 32, 32))
    assert (m.metric, m.unit, m.stats["unhandled"]) == ("macs_train", "MACs", {})
    assert m.stats["forward"] + m.stats["backward"] == m.value
    assert m.stats["conv_linear_matmul"] + m.stats["elementwise"] + m.stats["norm"] == m.value
    # train-mode BN computes its statistics: 3 per element, 3x what eval counts per image
    assert m.stats["norm"] > 0 and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture
def no_weight_init(monkeypatch):
    """Counts depend on shapes only: zeros instead of random initialisation (a third of a build)."""
    zero = torch.Tensor.zero_
    for name in ("uniform_", "normal_"):
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, **k: zero(self))


# Entries that cannot run at 64x64 (built for that size), with the reason the harness reports.
UNSUPPORTED = {
    "timm:ge": "act_layer",  # timm 1.0.31 passes act_layer to ConvMlp twice
    "timm:halo": "divisible by block_size 8",
    "timm:bat": "divisible by block_size 7",
}
LAMBDA_ON_RESNET18 = "LambdaLayer"  # needs out_channels == channels; runs on resnet50


def slot_counts(model, x):
    """Both counters on every distinct attached module, at the input it gets inside ``model``."""
    seen = {}
    slots = {n: s for n, s in model.named_modules() if isinstance(s, AttentionSlot)}

    def remember(name):
        return lambda _, args: seen.setdefault(name, args[0].shape) and None  # None: inputs unchanged

    hooks = [s.register_forward_pre_hook(remember(n)) for n, s in slots.items()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    distinct = {(tuple(seen[n]), repr(s)): s for n, s in slots.items()}
    return [count_flops(s, torch.randn(shape)) for (shape, _), s in distinct.items()]


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_both_counters_agree_on_every_registry_entry(backbone, no_weight_init):
    """The plain backbone once, then each distinct attached module at the input it gets there: an
    attached model's count is the backbone's (less any conv a module replaces) plus its slots', so
    equal parts give equal totals at a fifth of the time of counting 70 whole models."""
    x, differ, failures = torch.randn(1, 3, 64, 64), {}, {}
    assert count_flops(build(backbone), x).counters_agree
    for name in attnbench.list_modules():
        try:
            counts = slot_counts(build(backbone, name, input_size=64), x)
        except Exception as exc:
            failures[name] = error_info(exc)["message"]
            continue  # only the expected failures below, each with timm's reason
        differ.update({name: fc.counter_difference for fc in counts if not fc.counters_agree or fc.unhandled})  # noqa: B035 (one entry per model: the last counter that differs)
    assert differ == {}
    expected = dict(UNSUPPORTED, **({"timm:lambda": LAMBDA_ON_RESNET18} if backbone == "resnet18" else {}))
    assert set(failures) == set(expected), failures
    for name, reason in expected.items():
        assert reason in failures[name], (name, failures[name])


class DroppedAttention(nn.Module):
    """SDPA with dropout in training: on CPU it runs SDPA's math path, whose softmax is aten._safe_softmax."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q = self.proj(x)
        return nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5 if self.training else 0.0)


def test_sdpas_math_path_is_counted():
    mc = count_train_macs(DroppedAttention(), torch.randn(1, 2, 4, 8))  # 2 heads, 4 tokens: 2 * 4 * 4 weights
    assert mc.unhandled == {}
    assert mc.by_operator["_safe_softmax"] == mc.by_operator["_softmax_backward_data"] == 2 * 4 * 4
    assert mc.by_operator["div_"] == 2 * 4 * 4  # dropout's rescale; its bernoulli draw creates a tensor: free
    assert "bernoulli" not in mc.by_operator and "bernoulli_" not in mc.by_operator
