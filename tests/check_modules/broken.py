"""One defect each (and only one): `attnbench check` must report that defect and nothing else.

Each is a small working gate (CleanGate's shape) with the one thing a plugin author got wrong."""
import torch
import torch.nn.functional as F
from torch import nn


class _Gate(nn.Module):
    """Channel gate over GAP: the defect-free part every fixture shares."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def gate(self, x):
        return torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))

    def forward(self, x):
        return x * self.gate(x)


class WrongFirstParameter(nn.Module):
    """SGE-style: the first parameter is `groups`, so attnbench's channel count lands there (groups=64)."""

    def __init__(self, groups=8, channels=64):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        g = x.reshape(b, self.groups, -1, h, w)
        s = (g * g.mean((3, 4), keepdim=True)).sum(2)  # (b, groups, h, w)
        return (g * torch.sigmoid(s * self.weight + self.bias)[:, :, None]).reshape(b, c, h, w)


class ChangesShape(_Gate):
    """Returns half the resolution."""

    def forward(self, x):
        return F.avg_pool2d(x, 2, ceil_mode=True) * self.gate(x)


class ListOfConvs(nn.Module):
    """Convs in a plain Python list: parameters() sees none of them."""

    def __init__(self, channels):
        super().__init__()
        self.convs = [nn.Conv2d(channels, channels, 1) for _ in range(2)]

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        for conv in self.convs:
            s = conv(s)
        return x * torch.sigmoid(s)


class TensorAttribute(_Gate):
    """A tensor kept as a plain attribute instead of a buffer: .to(device) leaves it behind."""

    def __init__(self, channels):
        super().__init__(channels)
        self.bias = torch.zeros(1, channels, 1, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)) + self.bias)


class WritesInput(_Gate):
    def forward(self, x):
        return x.mul_(self.gate(x))


class NaNAtOnePixel(_Gate):
    """SRM-style std pooling with the unbiased estimator: NaN for a 1x1 map."""

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.std((2, 3), keepdim=True)))


class UnusedParameter(_Gate):
    def __init__(self, channels):
        super().__init__(channels)
        self.temperature = nn.Parameter(torch.ones(1))  # never used in forward


class BatchNorm1dGate(nn.Module):
    """BatchNorm1d on pooled features: train mode cannot normalise one sample."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x):
        return x * torch.sigmoid(self.bn(self.fc(x.mean((2, 3)))))[:, :, None, None]


class NoiseInEval(_Gate):
    """Noise injection left on in eval (should be ``if self.training``)."""

    def forward(self, x):
        return x * self.gate(x) * (1 + 0.1 * torch.rand_like(x))


class FourierFilter(_Gate):
    """GFNet-style global filter through the FFT, which neither MAC counter has a rule for."""

    def forward(self, x):
        f = torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])
        return x * torch.sigmoid(self.fc(f.mean((2, 3), keepdim=True)))


class MaskOnCpu(_Gate):
    """Builds a tensor in forward without device=: fine on the CPU, fails on a GPU."""

    def forward(self, x):
        return x * self.gate(x) * torch.ones(1, x.shape[1], 1, 1)


class FixedWidth(nn.Module):
    """Ignores `channels` and hard-codes 64: passes alone at 64 channels, fails at resnet18's layer2 (128)."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class MixesBatch(_Gate):
    """A2-Net-style: F.softmax without dim on (N, C, HW) normalises over dim 0, the batch (torch warns)."""

    def forward(self, x):
        n, c, h, w = x.shape
        a = F.softmax(x.reshape(n, c, h * w))
        return self.gate(x) * a.reshape(n, c, h, w) * x


class BatchMeanGate(_Gate):
    """Pools over the batch as well as space: the gate for one image depends on the others."""

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((0, 2, 3), keepdim=True)))


class ReturnsTuple(_Gate):
    """Returns (features, attention map), as many research repositories do."""

    def forward(self, x):
        g = self.gate(x)
        return x * g, g


class SlowForward(_Gate):
    """A forward that takes a minute (a hung lock or a Python loop behaves the same)."""

    def forward(self, x):
        import time

        time.sleep(60)
        return x * self.gate(x)


class BadLimit(_Gate):
    """A limit declared with a value that is not a positive int."""

    min_spatial = 0


class NoChannelParam(nn.Module):
    """ECA-style: the only parameter is the kernel size; no channel count at all."""

    def __init__(self, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        y = self.conv(x.mean((2, 3))[:, None])[:, 0]
        return x * torch.sigmoid(y)[:, :, None, None]


class NeedsOutWidth(_Gate):
    """CoordAtt-style: (inp, oup) with no default, so it cannot be called with a channel count alone."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__(inp)


class KeywordOnly(_Gate):
    """HaloAttention-style: every parameter is keyword-only."""

    def __init__(self, *, dim, block_size):
        super().__init__(dim)
