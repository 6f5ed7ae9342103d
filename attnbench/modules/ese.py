"""Effective SE (Lee & Park, CenterMask, CVPR 2020): one FC keeps all C channels.

GAP, 1x1 conv C->C (bias), hard sigmoid, scale. Parameters: C*C + C. Its official code puts it at the end of
VoVNet's OSA modules only: the block slot in ResNets and inverted residuals is our extension.
"""

from torch import nn
from torch.nn import functional as F


class EffectiveSE(nn.Module):
    placement = "block"

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))
