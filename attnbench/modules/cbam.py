"""CBAM (Woo et al., ECCV 2018), as in the paper and its official code.

Channel gate: avg- and max-pooled descriptors through one shared MLP (C->C/r->C, with bias),
summed, sigmoid. Spatial gate: channel-wise max and mean -> 7x7 conv 2->1 (no bias) +
BatchNorm -> sigmoid (``common.SpatialGate``, shared with Triplet). Channel gate first, then spatial gate (sequential arrangement).
Parameters: SE's 2*C*(C/r) + C/r + C, plus 2*k*k + 2 for the spatial conv and its BatchNorm.
Placement as the official code (github.com/Jongchan/attention-module, ``MODELS/model_resnet.py``): after
the block's last BN, before the addition (``block``).
"""

import torch
from torch import nn

from .common import SpatialGate, reduced_channels


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: float = 16):
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x):
        att = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class CBAM(nn.Module):
    placement = "block"

    def __init__(self, channels: int, reduction: float = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x):
        return self.spatial(self.channel(x))
