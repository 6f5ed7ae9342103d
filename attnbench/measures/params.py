"""Exact parameter counts, split into backbone and attached-attention parts."""

from typing import Dict

from torch import nn

from ..attach.backbone import AttentionSlot, attention_parameters
from ..attach.contract import hidden_numel, hidden_state
from ..records.measurement import Measurement


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def attention_hidden_state(model: nn.Module) -> Dict[str, object]:
    """State inside attached modules that parameters()/buffers() cannot see (the same detector as
    ``attnbench check``): {"hidden_state": paths within the module, "hidden_numel": elements held
    there, over all sites}; empty when there is none. Such a row's parameter count is too low."""
    paths, found = set(), []
    for slot in model.modules():
        if isinstance(slot, AttentionSlot):
            hidden = hidden_state(slot.attn)
            paths.update(path for path, _ in hidden)
            found += hidden
    return {"hidden_state": sorted(paths), "hidden_numel": hidden_numel(found)} if found else {}


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
            **attention_hidden_state(model),
        },
    )
