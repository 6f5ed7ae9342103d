"""Non-Local block (Wang et al., CVPR 2018), embedded-Gaussian version for images.

theta/phi/g: 1x1 convs C -> C/2; affinity softmax(theta^T phi) over all H*W positions;
y = affinity @ g; W: 1x1 conv C/2 -> C then BatchNorm whose weight starts at zero, so the
block starts as the identity; z = BN(W(y)) + x. ``subsample=True`` max-pools phi and g by 2
(the paper's cheaper variant). Parameters: 4*C*(C/2) + 3*(C/2) + C (convs) + 2*C (BN).
Placed as whole blocks after stages, not inside residual branches.
"""

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    placement = "stage"

    def __init__(self, channels: int, inter_channels: int = 0, subsample: bool = False):
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.pool = nn.MaxPool2d(2) if subsample else nn.Identity()
        self.w = nn.Conv2d(inter, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # identity at initialisation (paper, Sec. 4.1)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x):
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # N, HW, C'
        phi = self.pool(self.phi(x)).flatten(2)  # N, C', HW'
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # N, HW', C'
        affinity = torch.softmax(torch.bmm(theta, phi), dim=-1)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.bn(self.w(y))
