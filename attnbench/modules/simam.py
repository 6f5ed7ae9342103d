"""SimAM (Yang et al., ICML 2021): parameter-free, energy-based 3-D attention, lambda=1e-4.

e_inv = (x - mu)^2 / (4 * (sum((x - mu)^2) / (H*W - 1) + lambda)) + 0.5 per channel;
out = x * sigmoid(e_inv). Parameters: 0.
Placement as the official code (github.com/ZjjConan/SimAM, ``networks/imagenet/resnet.py`` and
``mobilenetv2.py``): right after the block's spatial conv, before its BatchNorm -- a BasicBlock's second
3x3 (``conv2``), a Bottleneck's or ResNeXt's 3x3 (``conv2``), an inverted residual's depthwise conv.
"""

from torch import nn


class SimAM(nn.Module):
    placement = "after_conv"
    min_spatial = 2  # documented limit, as the official code: it divides by H*W - 1
    limits_note = "the official code divides by H*W - 1: NaN at 1x1"

    def __init__(self, channels: int = 0, lam: float = 1e-4):
        super().__init__()
        self.lam = lam

    def forward(self, x):
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        e_inv = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.lam)) + 0.5
        return x * e_inv.sigmoid()
