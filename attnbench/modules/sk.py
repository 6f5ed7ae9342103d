"""Selective Kernel convolution (Li et al., CVPR 2019), M=2 branches, in place of a block's 3x3 conv
(``placement = "conv"``). Two official layouts, chosen by the conv it replaces (``conv_groups``):

- ``variant="sknet"`` (a grouped conv, i.e. ResNeXt: SKNet-50 is ResNeXt-50 32x4d with it; github.com/
  implus/SKNet, and timm's ``skresnext50_32x4d``, whose weights this matches one for one): branches are
  3x3 G-group convs with dilation 1 and 2 (the paper's 3x3 + "5x5"), d = max(C/r, L), L = 32.
- ``variant="sk-resnet"`` (a dense conv, i.e. a plain ResNet: the SK authors' own SK-ResNet,
  github.com/implus/PytorchInsight ``classification/models/imagenet/resnet_sk.py``, 26.15M parameters
  for ResNet-50 in their table): branch 1 is the dense 3x3 the block had, branch 2 a 3x3 G-group conv
  (dilation 1), d = C/r with no floor. In a BasicBlock (its first 3x3) this unit is our extension: the SK
  authors released none (``resnet_sk.py``: "#TODO sknet for basicblocks").

Both: each branch + BN + ReLU, no bias, stride of the replaced conv; fuse: sum, global average pool
(``nn.AdaptiveAvgPool2d``: the paper's s = GAP(U1 + U2)), 1x1 conv C->d (no bias) + BN + ReLU; select:
one 1x1 conv d->C per branch, no bias (the paper's A, B; PytorchInsight stacks them as one d->2C conv),
softmax across branches, weighted sum. G = 32, reduced to what divides both widths; r = 16. It brings
its own BN + ReLU, so the block's norm and activation after the replaced conv are dropped.
Parameters (C out, C_in in channels): sknet M*(C*C_in/G*9 + 2C) + (C*d + 2d) + M*d*C;
sk-resnet (9*C*C_in + 2C) + (C*C_in/G*9 + 2C) + (C*d + 2d) + 2*d*C.
"""

import math
from typing import Optional

import torch
from torch import nn

VARIANTS = ("auto", "sknet", "sk-resnet")


class SelectiveKernel(nn.Module):
    placement = "conv"
    includes_norm_act = True
    min_train_batch = 2  # documented limit, as SKNet and timm's SelectiveKernel
    limits_note = "as SKNet and timm's SelectiveKernel: BatchNorm over the pooled fuse vector z"

    def __init__(
        self,
        channels: int,
        out_channels: int = 0,
        stride: int = 1,
        conv_groups: int = 0,
        variant: str = "auto",
        branches: int = 2,
        groups: int = 32,
        reduction: float = 16,
        min_hidden: Optional[int] = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
        if variant == "auto":  # in place of a dense conv the SK-ResNet unit, else (grouped, or alone) SKNet's
            variant = "sk-resnet" if conv_groups == 1 else "sknet"
        if variant == "sk-resnet" and branches != 2:
            raise ValueError(f"the SK-ResNet unit has 2 branches (dense + grouped 3x3), not {branches}")
        out = out_channels or channels
        g = math.gcd(groups, math.gcd(channels, out))
        floor = min_hidden if min_hidden is not None else (32 if variant == "sknet" else 1)
        hidden = max(int(out // reduction), floor)
        self.variant = variant
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, out, 3, stride, padding=dilation, dilation=dilation, groups=groups_i, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            )
            for dilation, groups_i in self._branch_convs(variant, branches, g)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fuse = nn.Sequential(nn.Conv2d(out, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.select = nn.ModuleList(nn.Conv2d(hidden, out, 1, bias=False) for _ in range(branches))

    @staticmethod
    def _branch_convs(variant: str, branches: int, g: int):
        """(dilation, groups) per branch."""
        if variant == "sk-resnet":
            return [(1, 1), (1, g)]
        return [(1 + i, g) for i in range(branches)]

    def forward(self, x):
        feats = torch.stack([b(x) for b in self.branches], dim=1)  # N, M, C, H, W
        z = self.fuse(self.pool(feats.sum(1)))
        weights = torch.softmax(torch.stack([s(z) for s in self.select], dim=1), dim=1)  # N, M, C, 1, 1
        return (feats * weights).sum(1)
