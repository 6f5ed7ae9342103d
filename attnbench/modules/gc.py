"""Global Context block (Cao et al., ICCVW 2019 / TPAMI 2020), additive fusion, r=16.

Context: 1x1 conv C->1 (bias), softmax over H*W, attention-pooled C-vector. Transform:
1x1 conv C->C/r (bias), LayerNorm over (C/r, 1, 1), ReLU, 1x1 conv C/r->C (bias); the result is
added to every position. The last conv starts at zero (the official init), so the block is the
identity at first. Parameters: (C+1) + (C*C/r + C/r) + 2*C/r + (C/r*C + C).
GCNet's layout (github.com/xvjiarui/GCNet ``mmdet/models/backbones/resnet.py``, ``resnext.py``: ``after_1x1``):
one block at the end of every residual branch in c3-c5 only (ResNet stages 2-4, ``default_stages =
"all_but_first"``); ``stages: all`` puts it in every block, SE-style. In BasicBlocks (GCNet's asserts "Not
implemented yet") and inverted residuals the same slot is our extension.
"""

import torch
from torch import nn

from .se import reduced_channels


class GlobalContext(nn.Module):
    placement = "block"
    default_stages = "all_but_first"

    def __init__(self, channels: int, reduction: float = 16):
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.context = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x):
        n, c, h, w = x.shape
        weights = torch.softmax(self.context(x).view(n, 1, h * w), dim=-1)  # N, 1, HW
        context = torch.bmm(x.view(n, c, h * w), weights.transpose(1, 2)).view(n, c, 1, 1)
        return x + self.transform(context)
