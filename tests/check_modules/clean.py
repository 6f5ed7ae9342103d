"""Modules that keep the plugin contract: `attnbench check` must pass every check on them."""
import torch
from torch import nn


class CleanGate(nn.Module):
    """SE-style channel gate: GAP, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C, sigmoid, scale."""

    def __init__(self, channels, reduction=4):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                nn.Conv2d(channels // reduction, channels, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class CleanResidual(nn.Module):
    """A transform with its own residual, in_chs as the channel parameter, branches in a ModuleList,
    a registered buffer and train-aware dropout: all of it within the contract."""

    def __init__(self, in_chs, branches=2):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_chs, in_chs, 3, padding=1, groups=in_chs) for _ in range(branches))
        self.register_buffer("scale", torch.full((1, in_chs, 1, 1), 0.5))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        f = sum(b(x) for b in self.branches) * self.scale
        return x + self.drop(torch.ones_like(x) * f)


class ResidualGate(nn.Module):
    """fightingcv's CBAM layout: gate, then `out + residual` -- a transform with its own residual, not a gate."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        out = x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return out + x


class UnfoldGate(nn.Module):
    """Data that is moved or made, never computed on: nn.Unfold's patches (im2col) and a linspace ramp."""

    def __init__(self, channels):
        super().__init__()
        self.unfold = nn.Unfold(3, padding=1)
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        patches = self.unfold(x).reshape(n, c, 9, h, w)
        ramp = torch.linspace(0.5, 1.5, 9, device=x.device, dtype=x.dtype).reshape(1, 1, 9, 1, 1)
        local = (patches * ramp).mean(2)
        return x * torch.sigmoid(self.fc(local))


class DeclaresLimits(nn.Module):
    """SRM-style style pooling (unbiased std: NaN at 1x1) and BatchNorm over pooled (N, C) features (no
    batch statistics at batch 1), both declared as documented limits: check passes, skipping those cases."""

    min_spatial, min_train_batch = 2, 2
    limits_note = "unbiased std over H*W; BatchNorm over pooled features"

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x):
        return x * torch.sigmoid(self.bn(self.fc(x.std((2, 3)))))[:, :, None, None]
