"""Squeeze-and-Excitation (Hu et al., CVPR 2018), as in the paper.

squeeze: global average pool; excitation: Linear C->C/r (bias), ReLU, Linear C/r->C (bias),
sigmoid; scale: channel-wise multiply. Parameters: 2*C*(C/r) + C/r + C (weights + biases).
Placement as the official model (github.com/hujie-frank/SENet, ``models/SE-ResNet-50.prototxt``): after the
last BN of the residual branch, before the addition (``block``). The released models are Bottleneck
ResNets/ResNeXts: in BasicBlocks and in inverted residuals' SE slot it is our extension.
"""

from torch import nn

from .common import reduced_channels  # C/r, floored; re-exported for modules that import it from here


class SqueezeExcite(nn.Module):
    placement = "block"

    def __init__(self, channels: int, reduction: float = 16):
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        s = x.mean((2, 3))
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s[:, :, None, None]
