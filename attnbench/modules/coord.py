"""Coordinate Attention (Hou et al., CVPR 2021).

Pool along W (-> C x H x 1) and along H (-> C x 1 x W), concatenate, 1x1 conv C->m (bias) + BN +
h-swish with m = max(8, C/r) (r=32), split, 1x1 conv m->C (bias) per direction, sigmoid,
x * a_h * a_w. Parameters: (C*m + m) + 2m + 2*(m*C + C).
Placement as the official code (github.com/houqb/CoordAttention, ``mbv2_ca.py``): in MobileNetV2 after
the depthwise conv + BN + ReLU6 of every *expanding* block (the block slot; none in the first, t=1
block: ``depthwise_separable`` maps to None); elsewhere the block slot -- our extension (the official
code has MobileNetV2 only; EfficientNet/MobileNetV3 blocks too).
"""

import torch
from torch import nn


class CoordAttention(nn.Module):
    placement = {"depthwise_separable": None, "default": "block"}

    def __init__(self, channels: int, reduction: float = 32, min_hidden: int = 8):
        super().__init__()
        hidden = max(min_hidden, int(channels // reduction))
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish(inplace=True)
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        h, w = x.shape[2:]
        pooled_h = x.mean(3, keepdim=True)  # N, C, H, 1
        pooled_w = x.mean(2, keepdim=True).transpose(2, 3)  # N, C, W, 1
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return x * self.conv_h(y_h).sigmoid() * self.conv_w(y_w.transpose(2, 3)).sigmoid()
