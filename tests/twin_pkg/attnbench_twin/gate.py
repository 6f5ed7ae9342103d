"""Two weights per channel (the demo gate has one): which plugin a name resolved to shows in the count."""
import torch
from torch import nn


class TwinGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * (torch.sigmoid(self.scale) + self.bias)[None, :, None, None]
