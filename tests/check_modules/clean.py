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
