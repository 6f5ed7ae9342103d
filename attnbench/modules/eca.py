"""ECA (Wang et al., CVPR 2020): GAP, 1-D conv of size k across channels (no bias), sigmoid, scale.

k adapts to C by the paper's rule (Eq. 12): t = int(|log2(C) + b| / gamma), k = t if t is odd else
t + 1 (gamma=2, b=1). The official models do not use that rule (github.com/BangguWu/ECANet):
- ResNets fix k per stage (``--ksize 3557`` for ECA-Net50, 3357 for ECA-Net101/152), which
  ``kernel_sizes=(3, 5, 5, 7)`` reproduces through the ``stage`` the harness passes; the default in a
  ResNet stays the paper's adaptive rule (no official ResNet of another depth fixes a k per stage);
- MobileNetV2 (``models/eca_mobilenetv2.py``, the only official inverted-residual model) uses k = 1 in
  the blocks of its table rows with c < 96 output channels and k = 3 from 96 on (31 parameters in all;
  the first commit had ``c <= 96``, 25 parameters, changed on 2020-07-19 to the current ``c < 96``).
  That is the default in inverted-residual and depthwise-separable blocks (``block_kind``, told by the
  harness): k = 1 where the block's output has fewer than 96 channels, else 3 -- the official rule at
  width 1.0, where the table's c is the channel count; in EfficientNet and MobileNetV3 blocks the same
  rule is our extension (no official model).
``kernel_size`` fixes one k everywhere. Parameters: k.
Placement as the official code (``models/eca_resnet.py``, ``models/eca_mobilenetv2.py``): in ResNets at
the end of the residual branch (after the last BN, before the addition); in MobileNetV2's inverted
residuals after the projection conv + BN, on the block's output channels (``output``; every block, the
first t=1 block too).
``EcaMlp`` is timm's ``ecam`` experiment (not in the paper): 1x1 conv 1->C/8 (bias), ReLU,
k-conv C/8->1 (bias) over the channel axis.
"""

import math
from typing import Optional, Sequence

from torch import nn

from .common import make_divisible


def adaptive_kernel(channels: int, gamma: float = 2, b: float = 1) -> int:
    t = int(abs(math.log2(channels) + b) / gamma)
    return t if t % 2 else t + 1


MOBILENET_KINDS = ("inverted_residual", "depthwise_separable")


def mobilenetv2_kernel(channels: int) -> int:
    """eca_mobilenetv2.py: ``ksize = 1 if c < 96 else 3`` over its (t, c, n, s) table."""
    return 1 if channels < 96 else 3


class ECA(nn.Module):
    placement = {"inverted_residual": "output", "depthwise_separable": "output", "default": "block"}

    def __init__(
        self,
        channels: int,
        kernel_size: int = 0,
        gamma: float = 2,
        b: float = 1,
        kernel_sizes: Sequence[int] = (),
        stage: int = 0,
        block_kind: Optional[str] = "",
    ):
        super().__init__()
        if kernel_sizes and not 1 <= stage <= len(kernel_sizes):
            raise ValueError(f"kernel_sizes {list(kernel_sizes)} has no entry for stage {stage}")
        if kernel_sizes:
            k = kernel_sizes[stage - 1]
        elif kernel_size:
            k = kernel_size
        elif block_kind in MOBILENET_KINDS:
            k = mobilenetv2_kernel(channels)
        else:
            k = adaptive_kernel(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3))[:, None, :])  # N, 1, C
        return x * y.sigmoid()[:, 0, :, None, None]


class EcaMlp(nn.Module):
    placement = "block"

    def __init__(self, channels: int, kernel_size: int = 0, hidden: int = 0, gamma: float = 2, b: float = 1):
        super().__init__()
        k = kernel_size or max(3, adaptive_kernel(channels, gamma, b))
        hidden = hidden or make_divisible(channels / 8, 8)  # timm's ecam
        self.conv = nn.Conv1d(1, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(hidden, 1, k, padding=k // 2)

    def forward(self, x):
        y = self.conv2(self.act(self.conv(x.mean((2, 3))[:, None, :])))
        return x * y.sigmoid()[:, 0, :, None, None]
