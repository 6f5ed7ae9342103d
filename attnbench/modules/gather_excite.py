"""Gather-Excite GE-theta (Hu et al., NeurIPS 2018): a parametric gather, then excite by a sigmoid gate.

Default: **global extent**, the only GE-theta the authors released (github.com/hujie-frank/GENet,
``models/RN50-GEP.prototxt``): one depthwise conv whose kernel is the whole feature map (56, 28, 14, 7 in
ResNet-50's stages at 224; no padding, no bias) + BN, sigmoid, and the 1x1 gate multiplies every
position. It needs the site's feature size (``feat_size``, which attnbench passes; built for that input
size). Parameters: C*H*W + 2C per site -- ResNet-50 + GE-theta: 25,557,032 + 5,549,568 = 31,106,600.
``extent=2, 4 or 8`` is the paper's GE-theta (e): log2(e) depthwise 3x3 stride-2 convs (no bias), each
+ BN, ReLU between them; excite by nearest-neighbour upsampling back to H x W, sigmoid, multiply.
Parameters: log2(e) * (9C + 2C). Placement as RN50-GEP: the end of the residual branch (after the last
BN, before the addition); in BasicBlocks and inverted residuals the same slot is our extension (no
official model).
"""

import math
from typing import Optional, Sequence

from torch import nn
from torch.nn import functional as F


class GatherExcite(nn.Module):
    placement = "block"
    min_train_batch = 2  # documented limit, as the official RN50-GEP
    limits_note = (
        "as the official RN50-GEP: BatchNorm over the gathered 1x1 map, one value per channel and image "
        "(no batch statistics at batch 1)"
    )

    def __init__(self, channels: int, extent: int = 0, feat_size: Optional[Sequence[int]] = None):
        super().__init__()
        self.extent = extent
        if extent == 0:
            if not feat_size or min(feat_size) < 1:
                raise ValueError(
                    "ge_theta's global extent (the official RN50-GEP) needs the site's feat_size; "
                    "attnbench passes it -- or give extent=2, 4 or 8"
                )
            self.gather = nn.Sequential(
                nn.Conv2d(channels, channels, tuple(feat_size), groups=channels, bias=False), nn.BatchNorm2d(channels)
            )
            return
        n = int(math.log2(extent)) if extent > 0 else 0
        if extent < 2 or 2**n != extent:
            raise ValueError(f"extent must be 0 (global) or a power of two >= 2, got {extent}")
        layers = []
        for i in range(n):
            layers += [
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
            ]
            if i < n - 1:
                layers.append(nn.ReLU(inplace=True))
        self.gather = nn.Sequential(*layers)

    def forward(self, x):
        g = self.gather(x)
        if self.extent == 0:  # N, C, 1, 1: one gate per channel, broadcast over H x W
            return x * g.sigmoid()
        return x * F.interpolate(g, size=x.shape[-2:], mode="nearest").sigmoid()
