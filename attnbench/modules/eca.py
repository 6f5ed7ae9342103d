"""ECA (Wang et al., CVPR 2020): GAP, 1-D conv of size k across channels (no bias), sigmoid, scale.

k adapts to C by the paper's rule (Eq. 12): t = int(|log2(C) + b| / gamma), k = t if t is odd else
t + 1 (gamma=2, b=1). The official ResNet models do not use that rule: they fix k per stage
(``--ksize 3557`` for ECA-Net50, 3357 for ECA-Net101/152 in github.com/BangguWu/ECANet), which
``kernel_sizes=(3, 5, 5, 7)`` reproduces through the ``stage`` the harness passes; ``kernel_size``
fixes one k everywhere. Parameters: k.
Placement as the official code (github.com/BangguWu/ECANet, ``models/eca_resnet.py``,
``models/eca_mobilenetv2.py``): in ResNets at the end of the residual branch (after the last BN,
before the addition); in MobileNetV2's inverted residuals after the projection conv + BN, on the
block's output channels (``output``; every block, the first t=1 block too).
``EcaMlp`` is timm's ``ecam`` experiment (not in the paper): 1x1 conv 1->C/8 (bias), ReLU,
k-conv C/8->1 (bias) over the channel axis.
"""
import math
from typing import Sequence

from torch import nn

from .common import make_divisible


def adaptive_kernel(channels: int, gamma: float = 2, b: float = 1) -> int:
    t = int(abs(math.log2(channels) + b) / gamma)
    return t if t % 2 else t + 1


class ECA(nn.Module):
    placement = {"inverted_residual": "output", "depthwise_separable": "output", "default": "block"}

    def __init__(self, channels: int, kernel_size: int = 0, gamma: float = 2, b: float = 1,
                 kernel_sizes: Sequence[int] = (), stage: int = 0):
        super().__init__()
        if kernel_sizes and not 1 <= stage <= len(kernel_sizes):
            raise ValueError(f"kernel_sizes {list(kernel_sizes)} has no entry for stage {stage}")
        k = kernel_sizes[stage - 1] if kernel_sizes else kernel_size or adaptive_kernel(channels, gamma, b)
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
