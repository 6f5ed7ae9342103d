"""Weights a measured model is built with: every layer carries real activations, not a training trick's zeros.

timm's ResNets, RegNets and ByobNets zero the last BatchNorm of every residual branch (``zero_init_last``),
Non-Local zeroes its output BatchNorm, GCNet its last conv, SGE its per-group scale: good for training from
scratch, but then every module at the end of a residual branch sees an all-zero input, a module's own
branch adds nothing, and a NaN check, a timing or a runtime's equivalence check runs on zeros (a module
that computed something else under export would pass it). :func:`measurement_init` undoes exactly those
zeros, in the one place every measurement path goes through (``attach.build(init="measurement")``, the
default); accuracy training builds with ``init="train"`` and keeps the training init.

The rule: an all-zero ``weight`` (a direct parameter of a layer) becomes
- ``MEASUREMENT_SCALE`` (0.1) in a normalisation layer or any other layer that is not a conv or linear
  (SGE's per-group scale): a small scale, so 50 residual blocks in a row keep their activations in range
  (ResNet-152's logits at 224: std 0.07 with 0.1; with 1.0 its res4 outputs reach 3e7);
- PyTorch's own default init (the layer's ``reset_parameters()``) in a conv or linear layer.
Nothing else changes: parameter counts and MACs are the same under either init.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

MEASUREMENT, TRAIN = "measurement", "train"
INITS = (MEASUREMENT, TRAIN)
MEASUREMENT_SCALE = 0.1
_PRODUCTS = (nn.modules.conv._ConvNd, nn.Linear)


def measurement_init(model: nn.Module) -> List[str]:
    """Re-initialise every all-zero ``weight`` by the rule above; returns the parameters it changed."""
    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = module._parameters.get("weight")
            if weight is None or weight.numel() == 0 or bool(weight.any()):
                continue
            if isinstance(module, _PRODUCTS):
                module.reset_parameters()
            else:
                weight.fill_(MEASUREMENT_SCALE)
            changed.append(f"{name}.weight" if name else "weight")
    return changed
