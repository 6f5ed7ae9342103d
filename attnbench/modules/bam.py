"""BAM (Park et al., BMVC 2018), placed between stages (after every stage but the last), as the official
ResNets (github.com/Jongchan/attention-module ``MODELS/model_resnet.py``); between the stages of other
networks (MobileNetV2, EfficientNet, ...) it is our extension.

Channel branch: GAP, Linear C->C/r (bias) + BatchNorm1d + ReLU, Linear C/r->C (bias).
Spatial branch: 1x1 conv C->C/r + BN + ReLU, two 3x3 convs with dilation d=4 (+BN+ReLU),
1x1 conv C/r->1. Combination as in the official code (multiplicative, not the paper's sum):
out = x * (1 + sigmoid(channel * spatial)). r=16, d=4.
"""

from torch import nn

from .common import reduced_channels


class BAM(nn.Module):
    placement = "stage"
    default_stages = "all_but_last"
    min_train_batch = 2  # documented limit, as the official code
    limits_note = "as the official code: BatchNorm1d over the pooled (N, C) features of the channel branch"

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4):
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.channel = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        layers = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.spatial = nn.Sequential(*layers)

    def forward(self, x):
        channel = self.channel(x.mean((2, 3)))[:, :, None, None]
        return x * (1 + (channel * self.spatial(x)).sigmoid())
