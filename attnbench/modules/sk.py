"""Selective Kernel unit (Li et al., CVPR 2019), M=2 branches, as a shape-keeping module.

Branches: 3x3 grouped convs with dilation 1 and 2 (the paper's 3x3 + "5x5" as dilated 3x3),
each + BN + ReLU, no bias. Fuse: sum, GAP, 1x1 conv C->d (no bias) + BN + ReLU with
d = max(C/r, L) (r=16, L=32). Select: one 1x1 conv d->C (bias) per branch, softmax across
branches, weighted sum. Groups G=32 (reduced to gcd(G, C) for narrow layers).
Parameters: M*(C*C/G*9 + 2C) + (C*d + 2d) + M*(d*C + C).
"""
import math

import torch
from torch import nn


class SelectiveKernel(nn.Module):
    placement = "block"

    def __init__(self, channels: int, branches: int = 2, groups: int = 32, reduction: float = 16, min_hidden: int = 32):
        super().__init__()
        g = math.gcd(groups, channels)
        hidden = max(int(channels // reduction), min_hidden)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1 + i, dilation=1 + i, groups=g, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for i in range(branches))
        self.fuse = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.select = nn.ModuleList(nn.Conv2d(hidden, channels, 1) for _ in range(branches))

    def forward(self, x):
        feats = torch.stack([b(x) for b in self.branches], dim=1)  # N, M, C, H, W
        z = self.fuse(feats.sum(1).mean((2, 3), keepdim=True))
        weights = torch.softmax(torch.stack([s(z) for s in self.select], dim=1), dim=1)  # N, M, C, 1, 1
        return (feats * weights).sum(1)
