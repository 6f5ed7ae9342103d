"""Edges real plugin packages showed (issue 32): each fixture is the smallest module with one of them.

ExpandedGate: fightingcv BAM's channel branch (its output is an expand_as view); PlaceholderState: MONAI
SABlock's empty ``att_mat`` (sound); SpatialDimsFirst: MONAI's (spatial_dims, in_channels, ...) signature;
NeedsReduction: smp's SEModule(channels, reduction); EvenMaps: a module with its own block size (HaloNet's);
IntegerOutput: a module whose output only the block's own in-place add cannot take (an error raised in timm,
outside the module); UsesLibrary: an error raised inside a library the plugin calls (tests/check_libs)."""
import torch
import torch.nn.functional as F
from torch import nn


class ExpandedGate(nn.Module):
    """Returns the channel gate expanded to the input's shape: every element of a channel shares one memory cell."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x):
        g = torch.sigmoid(self.fc(x.mean((2, 3))))
        return g[:, :, None, None].expand_as(x)


class PlaceholderState(nn.Module):
    """A channel gate that keeps an empty tensor as a placeholder for its last attention map (MONAI's SABlock)."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.att_mat = torch.Tensor()

    def forward(self, x):
        g = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return x * g


class SpatialDimsFirst(PlaceholderState):
    """MONAI-style signature: the dimensionality of the data first, then the channel count."""

    def __init__(self, spatial_dims, in_channels, r=2):
        super().__init__(in_channels)
        self.spatial_dims, self.r = spatial_dims, r


class NeedsReduction(nn.Module):
    """smp's SEModule: the reduction has no default, so `factory(channels)` cannot be called; `-O reduction=4` can."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class EvenMaps(PlaceholderState):
    """Pools in 2x2 blocks without padding, as a blocked attention does: maps of odd size do not fit its blocks."""

    def forward(self, x):
        n, c, h, w = x.shape
        assert h % 2 == 0 and w % 2 == 0, "fmap dimensions must be divisible by the block size"
        g = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2)
        return x * torch.sigmoid(self.fc(g))


class IntegerOutput(nn.Module):
    """Returns a sign map as int64: it keeps the shape, but a block that adds its float shortcut in place into it
    (timm's ResNet: `x += shortcut`) fails in timm's code, outside the module."""

    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return (x > 0).long()


def _library():
    """tests/check_libs/fakelib.py, loaded from its file: a library outside the plugin's folder."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("attnbench_test_fakelib", Path(__file__).parents[1] / "check_libs" /
                                                  "fakelib.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakelib = _library()


class UsesLibrary(PlaceholderState):
    """Calls a library with a pattern it cannot apply: the error is raised inside the library, below this file."""

    def forward(self, x):
        flat = fakelib.rearrange(x, "b c h w -> b c (h w)")
        return x * torch.sigmoid(flat.mean(-1))[:, :, None, None]


class HardCodedWidth(nn.Module):
    """DANet-style: the width its layers are built for is its default (512), whatever channel count it is given."""

    def __init__(self, channels=512):
        super().__init__()
        self.fc = nn.Conv2d(512, 512, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
