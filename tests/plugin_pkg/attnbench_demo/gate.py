"""A learned per-channel gate: exactly ``channels`` parameters, no timm keywords accepted."""
import torch
from torch import nn


class DemoGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * (2 * torch.sigmoid(self.logit))[None, :, None, None]


class Explode(DemoGate):
    """Builds fine, raises in forward: the harness must record one failed cell and go on."""

    def forward(self, x):
        raise RuntimeError("demo_explode: forward raised on purpose")
