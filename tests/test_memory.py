"""Activation elements and autograd-saved bytes, each worked out by hand from the operators that run."""

import torch
from torch import nn

from attnbench import build
from attnbench.measures.memory import measure_activations, measure_saved_memory
from attnbench.modules.se import SqueezeExcite

N, C_IN, C, H = 2, 3, 8, 5  # batch, input channels, conv channels, spatial size
F32 = 4  # bytes per float32 element


def conv_relu(inplace=False, *tail):
    return nn.Sequential(nn.Conv2d(C_IN, C, 3, padding=1, bias=False), nn.ReLU(inplace=inplace), *tail)


def image():
    return torch.randn(N, C_IN, H, H)


class Square(nn.Module):
    """Saves one tensor twice (mul saves both operands, here the same one), or two views of it."""

    def __init__(self, transpose=False):
        super().__init__()
        self.transpose = transpose

    def forward(self, x):
        return x * (x.transpose(2, 3) if self.transpose else x)


class DeadBranch(nn.Module):
    """Computes and saves something the output does not depend on: its graph is gone by the end."""

    def forward(self, x):
        torch.sigmoid(x * 2)
        return x


class Reshape(nn.Module):
    """reshape of a non-contiguous tensor: a copy (clone) then _unsafe_view of that copy."""

    def forward(self, x):
        return x.transpose(2, 3).reshape(x.shape[0], -1)


# ---- activations (eval forward, elements per image) ----


def test_activations_of_conv_and_relu_by_hand():
    m = measure_activations(conv_relu(), image())
    # conv output C*H*H, relu output (a new tensor) C*H*H; the input is not counted
    assert m.value == C * H * H + C * H * H == 400
    assert m.unit == "elements" and m.stats["batch"] == N
    assert m.stats["bytes_per_image"] == 400 * F32
    assert m.stats["by_op"] == {"convolution": 200, "relu": 200}
    # fvcore counts the convolution output only, in raw elements for the batch: /N per image
    assert m.stats["fvcore"] == m.stats["conv_linear_matmul"] == C * H * H


def test_inplace_relu_and_views_add_nothing():
    # relu_ writes into the conv output: only the conv's C*H*H
    assert measure_activations(conv_relu(True), image()).value == C * H * H
    # flatten of a contiguous tensor is a view
    assert measure_activations(conv_relu(True, nn.Flatten()), image()).value == C * H * H
    # reshape of a transposed tensor copies once (clone, C*H*H); the _unsafe_view after it shares
    # the copy's storage (no alias annotation in its schema, caught by the storage check)
    m = measure_activations(conv_relu(True, Reshape()), image())
    assert m.value == 2 * C * H * H and m.stats["by_op"] == {"convolution": 200, "clone": 200}


def test_activations_of_squeeze_excite_by_hand():
    c, hw = 64, 8
    hidden = c // 16
    se = SqueezeExcite(c)
    m = measure_activations(se, torch.randn(1, c, hw, hw))
    # x.mean((2,3)) -> c; fc1 (addmm) -> hidden; ReLU(inplace) -> 0; fc2 (addmm) -> c; sigmoid -> c;
    # s[:, :, None, None] is a view -> 0; x * s -> c*hw*hw
    assert m.value == c + hidden + c + c + c * hw * hw == 4292
    # fvcore sees the two linear layers only
    assert m.stats["fvcore"] == m.stats["conv_linear_matmul"] == hidden + c
    assert se.training  # mode put back


def test_conv_linear_matmul_part_agrees_with_fvcore_on_resnet18():
    model = build("resnet18", "none", input_size=(64, 64))
    m = measure_activations(model, torch.randn(1, 3, 64, 64))
    assert m.stats["conv_linear_matmul"] == m.stats["fvcore"] == 203752
    # every conv is followed by BatchNorm (a new tensor of the same size in eval); ReLUs and the
    # residual add are in-place; max-pool returns values and int64 indices (16*16*64 each at 64x64)
    by_op = m.stats["by_op"]
    assert by_op["native_batch_norm"] == by_op["convolution"]
    assert by_op["max_pool2d_with_indices"] == 2 * 64 * 16 * 16
    assert m.value == sum(by_op.values())


# ---- autograd-saved bytes (train forward, bytes per image) ----


def test_saved_bytes_of_conv_and_relu_by_hand():
    m = measure_saved_memory(conv_relu(), image())
    # conv saves its input (for the weight gradient) and its weight (a parameter: excluded);
    # relu saves its output
    total = N * C_IN * H * H * F32 + N * C * H * H * F32
    assert m.stats["saved_bytes"] == total == 2200 and m.value == total / N
    assert m.stats["tensors"] == 2 and m.unit == "bytes"
    assert m.stats["excluded_param_bytes"] == C * C_IN * 3 * 3 * F32
    assert m.stats["input_bytes"] == N * C_IN * H * H * F32


def test_inplace_relu_saves_the_conv_output_buffer():
    # relu_ saves its result, which is the conv output's storage; nothing else saves that buffer,
    # so the count equals the out-of-place one
    m = measure_saved_memory(conv_relu(True), image())
    assert m.stats["saved_bytes"] == N * C_IN * H * H * F32 + N * C * H * H * F32


def test_a_storage_saved_twice_counts_once():
    conv_out = N * C * H * H * F32
    for transpose in (False, True):  # the same tensor twice, then two views of one buffer
        m = measure_saved_memory(conv_relu(True, Square(transpose)), image())
        # input + the relu_/conv buffer (saved by relu_ and twice by mul); the mul output is not saved
        assert m.stats["saved_bytes"] == N * C_IN * H * H * F32 + conv_out and m.stats["tensors"] == 2


def test_saved_bytes_of_squeeze_excite_by_hand():
    c, hw = 64, 8
    hidden = c // 16
    m = measure_saved_memory(SqueezeExcite(c), torch.randn(1, c, hw, hw))
    # mean saves nothing; fc1 saves its input s (c) for its weight gradient; ReLU(inplace) saves its
    # output (hidden), which fc2 saves again (counted once) with its weight transposed (a view of a
    # parameter: excluded); sigmoid saves its output (c); x * gate saves x (for the gate's gradient)
    assert m.value == (c + hidden + c + c * hw * hw) * F32 == 16912
    assert m.stats["tensors"] == 4 and m.stats["excluded_param_bytes"] == c * hidden * F32


def test_branches_the_output_does_not_need_are_not_counted():
    m = measure_saved_memory(nn.Sequential(conv_relu(), DeadBranch()), image())
    assert m.stats["saved_bytes"] == N * C_IN * H * H * F32 + N * C * H * H * F32


def test_train_forward_leaves_the_model_as_it_was():
    model = nn.Sequential(conv_relu(), nn.BatchNorm2d(C)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure_saved_memory(model, image())
    # conv input + relu output + BatchNorm's save_mean and save_invstd (C each); BatchNorm saves the
    # relu output again as its input, and weight/running stats are excluded
    assert m.stats["saved_bytes"] == (N * C_IN * H * H + N * C * H * H + 2 * C) * F32
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_everything_saved_is_freed_afterwards(monkeypatch):
    import weakref

    from attnbench.measures import memory

    held = []

    class Tracked(memory._Saved):
        __slots__ = ()

        def __init__(self, tensor):
            super().__init__(tensor)
            held.append(weakref.ref(self))

    monkeypatch.setattr(memory, "_Saved", Tracked)
    measure_saved_memory(nn.Sequential(conv_relu(), nn.BatchNorm2d(C), DeadBranch()), image())
    assert held and all(ref() is None for ref in held)  # the graph went with the output: no leak


def test_resnet50_and_se_activations_by_hand():
    from formulas import RESNET50_STAGES, resnet50_activations, se_activations

    from attnbench.attach.backbone import build

    x = torch.randn(1, 3, 224, 224)
    bare = measure_activations(build("resnet50", "none"), x)
    se = measure_activations(build("resnet50", "se", reduction=16), x)
    assert bare.stats["fvcore"] == 11_113_984 + 1000  # fvcore's conv + classifier outputs
    assert bare.value == resnet50_activations() == 22_632_424
    assert se.value - bare.value == sum(n * se_activations(c, side) for n, c, side in RESNET50_STAGES) == 5_565_616


def test_train_memory_per_image_depends_on_the_batch():
    """conv 3->4 (no bias) + BN(4) on (n, 3, 8, 8): the conv saves its input (3*64 floats per image), BN its input
    (4*64 per image) and its batch mean and inverse std (4 + 4 floats for the whole batch): 1792 + 32/n bytes per
    image. The per-image figure holds at its batch only (the record keeps batch and saved_bytes)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    for n in (2, 4, 8):
        m = measure_saved_memory(model, torch.randn(n, 3, 8, 8))
        assert m.stats["saved_bytes"] == n * (3 * 64 + 4 * 64) * 4 + 2 * 4 * 4 and m.stats["batch"] == n
        assert m.value == 1792 + 32 // n  # 1808, 1800, 1796
    assert "do not scale with it" in m.method
