"""Exact parameter counts, split into backbone and attached-attention parts."""
from torch import nn

from ..attach import attention_parameters
from .record import Measurement


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def measure_params(model: nn.Module) -> Measurement:
    total = count_params(model)
    return Measurement(
        metric="params",
        value=total,
        unit="parameters",
        method="sum of numel over model.parameters()",
        stats={
            "attention": attention_parameters(model),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
    )
