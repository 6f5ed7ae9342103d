"""Triplet Attention (Misra et al., WACV 2021): three branches capturing (C,H), (C,W), (H,W).

Each branch is CBAM's spatial gate (``common.SpatialGate``): Z-pool (max and mean over one axis ->
2 maps), 7x7 conv 2->1 (no bias) + BN, sigmoid, scale; the branches for (C,W) and (C,H) work on
rotated tensors; outputs averaged.
Parameters: 3 * (2*k*k + 2) = 300 for k=7.
Placement as the official code (github.com/landskape-ai/triplet-attention, ``MODELS/resnet.py``,
``MODELS/mobilenet.py``): in ResNets at the end of the residual branch, before the addition; in
MobileNetV2's inverted residuals after the projection conv + BN, on the block's output channels.
"""

from torch import nn

from .common import SpatialGate


class TripletAttention(nn.Module):
    placement = {"inverted_residual": "output", "depthwise_separable": "output", "default": "block"}

    def __init__(self, channels: int = 0, kernel_size: int = 7):
        super().__init__()
        self.cw = SpatialGate(kernel_size)  # rotate so H plays the channel role: attends over (C, W)
        self.hc = SpatialGate(kernel_size)  # rotate so W plays the channel role: attends over (H, C)
        self.hw = SpatialGate(kernel_size)  # plain spatial branch

    def forward(self, x):
        a = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        b = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        return (a + b + self.hw(x)) / 3
