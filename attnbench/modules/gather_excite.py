"""Gather-Excite GE-theta (Hu et al., NeurIPS 2018), parametric gather with extent e=8.

Gather: log2(e) depthwise 3x3 stride-2 convs (no bias), each + BN, ReLU between them;
excite: nearest-neighbour upsampling back to H x W, sigmoid, multiply.
Parameters: log2(e) * (9C + 2C).
"""
import math

from torch import nn
from torch.nn import functional as F


class GatherExcite(nn.Module):
    placement = "block"

    def __init__(self, channels: int, extent: int = 8):
        super().__init__()
        n = int(math.log2(extent))
        if 2 ** n != extent or n < 1:
            raise ValueError(f"extent must be a power of two >= 2, got {extent}")
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False), nn.BatchNorm2d(channels)]
            if i < n - 1:
                layers.append(nn.ReLU(inplace=True))
        self.gather = nn.Sequential(*layers)

    def forward(self, x):
        g = self.gather(x)
        return x * F.interpolate(g, size=x.shape[-2:], mode="nearest").sigmoid()
