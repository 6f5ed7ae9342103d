"""Selective Kernel convolution (Li et al., CVPR 2019), M=2 branches: SKNet's replacement for a
block's 3x3 convolution (``placement = "conv"``; SKNet-50 is ResNeXt-50 32x4d with it).

Branches: 3x3 grouped convs with dilation 1 and 2 (the paper's 3x3 + "5x5" as dilated 3x3),
each + BN + ReLU, no bias, stride of the replaced conv. Fuse: sum, GAP, 1x1 conv C->d (no bias) +
BN + ReLU with d = max(C/r, L) (r=16, L=32). Select: one 1x1 conv d->C per branch, no bias (the
paper's matrices A, B), softmax across branches, weighted sum. Groups G=32 (reduced to what divides
both widths). It brings its own BN + ReLU, so the block's norm and activation after the replaced
conv are dropped -- as in timm's ``skresnext50_32x4d``, whose parameter count this matches.
With C = out channels and C_in = in channels:
parameters M*(C*C_in/G*9 + 2C) + (C*d + 2d) + M*d*C.
"""
import math

import torch
from torch import nn


class SelectiveKernel(nn.Module):
    placement = "conv"
    includes_norm_act = True

    def __init__(self, channels: int, out_channels: int = 0, stride: int = 1, branches: int = 2, groups: int = 32,
                 reduction: float = 16, min_hidden: int = 32):
        super().__init__()
        out = out_channels or channels
        g = math.gcd(groups, math.gcd(channels, out))
        hidden = max(int(out // reduction), min_hidden)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, out, 3, stride, padding=1 + i, dilation=1 + i, groups=g, bias=False),
                          nn.BatchNorm2d(out), nn.ReLU(inplace=True))
            for i in range(branches))
        self.fuse = nn.Sequential(nn.Conv2d(out, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.select = nn.ModuleList(nn.Conv2d(hidden, out, 1, bias=False) for _ in range(branches))

    def forward(self, x):
        feats = torch.stack([b(x) for b in self.branches], dim=1)  # N, M, C, H, W
        z = self.fuse(feats.sum(1).mean((2, 3), keepdim=True))
        weights = torch.softmax(torch.stack([s(z) for s in self.select], dim=1), dim=1)  # N, M, C, 1, 1
        return (feats * weights).sum(1)
