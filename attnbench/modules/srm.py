"""SRM, Style-based Recalibration (Lee et al., ICCV 2019).

Style pooling: per-channel mean and standard deviation; style integration: a channel-wise
fully connected layer (2 weights per channel, no bias) + BatchNorm + sigmoid; scale. Placement as the
official ResNet (github.com/hyunjaelee410/style-based-recalibration-module ``models/resnet.py``): after
the last BN, before the addition; its BasicBlock does not run (NameError), so there and in inverted
residuals the slot is our extension.
Parameters: 2C + 2C = 4C.
"""

import torch
from torch import nn


class SRM(nn.Module):
    placement = "block"
    min_spatial, min_train_batch = 2, 2  # documented limits, as the official code
    limits_note = (
        "as the official code: unbiased std over H*W (NaN at 1x1), BatchNorm over the pooled (N, C) "
        "style vector (no batch statistics at batch 1)"
    )

    def __init__(self, channels: int):
        super().__init__()
        self.cfc = nn.Conv1d(channels, channels, 2, groups=channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x):
        flat = x.flatten(2)
        style = torch.cat([flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)], dim=-1)  # N, C, 2
        z = self.bn(self.cfc(style))  # N, C, 1
        return x * z.sigmoid()[..., None]
