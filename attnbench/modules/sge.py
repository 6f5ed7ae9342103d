"""Spatial Group-wise Enhance (Li et al., 2019), G=64 groups (reduced to divide C).

Per group: similarity of each position to the group's GAP vector, normalised over space
(zero mean, unit std), per-group affine (weight starts at 0, bias at 1), sigmoid, scale.
Parameters: 2G.
Placement as the official code (github.com/implus/PytorchInsight, ``classification/models/imagenet/
resnet_sge.py``): after the block's last BN, before the addition (``block``).
"""

import math

import torch
from torch import nn


class SpatialGroupEnhance(nn.Module):
    placement = "block"
    min_spatial = 2  # documented limit, as the official code (PytorchInsight): unbiased std over H*W
    limits_note = "the official code divides by the unbiased std over H*W positions: NaN at 1x1"

    def __init__(self, channels: int, groups: int = 64, eps: float = 1e-5):
        super().__init__()
        self.groups = math.gcd(groups, channels)
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))
        self.eps = eps

    def forward(self, x):
        n, c, h, w = x.shape
        xg = x.reshape(n * self.groups, c // self.groups, h, w)
        t = (xg * xg.mean((2, 3), keepdim=True)).sum(1, keepdim=True)  # N*G, 1, H, W
        t = t.reshape(n * self.groups, -1)
        t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + self.eps)
        t = t.reshape(n, self.groups, h, w) * self.weight + self.bias
        gate = t.reshape(n * self.groups, 1, h, w).sigmoid()
        return (xg * gate).reshape(n, c, h, w)
