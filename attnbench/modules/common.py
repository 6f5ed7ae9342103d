"""Building blocks shared by several first-party modules, so each paper's detail is written once.

Changing one of these changes every module that uses it (and its tested parameter count):
``reduced_channels`` (SE, CBAM, BAM, GC), ``SpatialGate`` (CBAM, Triplet), ``make_divisible`` (ECA-MLP).
"""

import torch
from torch import nn


def reduced_channels(channels: int, reduction: float) -> int:
    """C/r as the papers write it (floored, at least 1); no rounding to a multiple of 8."""
    return max(1, int(channels // reduction))


def make_divisible(value: float, divisor: int = 8, min_value: int = 0) -> int:
    """timm's channel rounding (``timm.layers.make_divisible`` at its default round_limit=0.9): nearest
    multiple of ``divisor``, at least ``min_value or divisor``, never more than 10% below ``value``.
    Kept here rather than imported so a timm upgrade cannot silently change a first-party count."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SpatialGate(nn.Module):
    """CBAM's spatial gate, also each Triplet branch: channel max and mean -> kxk conv 2->1 (no bias)
    + BatchNorm -> sigmoid -> scale. Parameters: 2*k*k + 2. The attribute names ``conv``/``bn``
    are the modules' state_dict keys: keep them."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))
