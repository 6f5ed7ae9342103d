"""Build a timm backbone (``pretrained=False`` always) with an attention module attached.

Two placements:
- ``block``: inside every residual block, at the end of the residual branch (after the last
  BatchNorm, before the addition) -- the SE-ResNet layout. Uses timm's own hook for the
  family (ResNet/ResNeXt ``block_args=dict(attn_layer=...)``).
- ``stage``: whole blocks inserted after chosen stages (Non-Local's layout), found through
  timm's ``feature_info``; works for any family that reports it.

Every attached module is wrapped in an :class:`AttentionSlot`, which adapts timm's
constructor keywords (``device``/``dtype``) to the plain ``factory(channels, **options)``
contract, checks that the module keeps the input shape, and marks the site so parameter and
FLOP counts can be split into backbone and attention parts.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import AttnBenchError, ModuleDoesNotFit, UnknownNameError
from .registry import get_module, is_baseline

PLACEMENTS = ("block", "stage")
ATTACH_OPTIONS = ("placement", "stages", "blocks")
# Names the Non-Local paper's users expect; mapped onto the generic stage options.
ALIASES = {"nonlocal_stages": "stages", "nonlocal_blocks": "blocks"}
# timm families whose blocks take an attention layer per block, and the hook used:
# ResNet/ResNeXt through timm's own constructor argument; the others by replacing the block
# attribute where the family calls its SE/attention layer (native SE is replaced, Identity filled).
BLOCK_HOOKS = {
    "resnet": "block_args.attn_layer",
    "efficientnet": "se",  # EfficientNet, MobileNetV2, MixNet, ... (_efficientnet_blocks)
    "mobilenetv3": "se",
    "regnet": "se",
    "byobnet": "attn_last",  # after the last conv + norm, before the residual add
}


@dataclass(frozen=True)
class Attachment:
    """Where a module sits in a built model; copied into every record."""

    module: str
    placement: str
    sites: List[str] = field(default_factory=list)
    stages: Optional[List[int]] = None
    replaced: int = 0  # sites where the family's own attention (e.g. MobileNetV3's SE) was replaced

    def as_dict(self) -> dict:
        return {"module": self.module, "placement": self.placement, "sites": len(self.sites), "stages": self.stages,
                "replaced": self.replaced}


class AttentionSlot(nn.Module):
    """One attached attention module; fails clearly if it changes the feature shape."""

    def __init__(self, module: nn.Module, name: str, channels: int):
        super().__init__()
        self.attn = module
        self.module_name = name
        self.channels = channels

    def forward(self, x):
        y = self.attn(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ModuleDoesNotFit(
                f"attention module {self.module_name!r} returned {got} for input {tuple(x.shape)}; "
                "an attention module must keep the (N, C, H, W) shape"
            )
        return y


def list_backbones(pattern: str = "") -> List[str]:
    import timm

    return timm.list_models(pattern or "*")


def backbone_family(backbone: str) -> str:
    """timm's model file for a name, e.g. 'resnet' for resnet50 and seresnext26d_32x4d."""
    import timm

    if not timm.is_model(backbone):
        raise UnknownNameError("backbone", backbone, timm.list_models(), "see `attnbench list backbones`")
    return timm.models.model_entrypoint(backbone).__module__.rsplit(".", 1)[-1]


def split_options(options: Dict) -> tuple[Dict, Dict]:
    """(attachment options, module options); aliases such as nonlocal_stages are mapped."""
    attach, module = {}, {}
    for key, value in options.items():
        key = ALIASES.get(key, key)
        (attach if key in ATTACH_OPTIONS else module)[key] = value
    return attach, module


def check_module_options(name: str, factory: Callable, options: Dict) -> None:
    """Fail before building anything if the factory cannot take these options."""
    try:
        inspect.signature(factory).bind(1, **options)
    except TypeError as exc:
        raise AttnBenchError(f"module {name!r} does not accept options {sorted(options)}: {exc}; fix its options in the suite")
    except ValueError:
        pass  # no introspectable signature (C extension): find out at build time


def _slot_factory(name: str, factory: Callable, options: Dict) -> Callable[..., AttentionSlot]:
    """What timm gets as ``attn_layer``: swallows timm's own keywords (device, dtype, ...)."""

    def make(channels: int, device=None, dtype=None, **_timm_kwargs) -> AttentionSlot:
        try:
            module = factory(channels, **options)
        except AttnBenchError:
            raise
        except Exception as exc:
            raise ModuleDoesNotFit(
                f"attention module {name!r} failed to build for {channels} channels: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(module, nn.Module):
            raise ModuleDoesNotFit(f"attention module {name!r} returned {type(module).__name__}, not a torch.nn.Module")
        if device is not None or dtype is not None:
            module = module.to(device=device, dtype=dtype)
        return AttentionSlot(module, name, channels)

    return make


def _stage_entries(model: nn.Module) -> List[dict]:
    """feature_info entries that are stages (a leading stem or activation entry is dropped)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ModuleDoesNotFit(f"backbone {type(model).__name__} reports no feature_info, so no stage to attach after")
    entries = [dict(e) for e in info]
    while entries:
        sub = model.get_submodule(entries[0]["module"])
        if "stem" in entries[0]["module"] or not list(sub.children()):
            entries.pop(0)
        else:
            break
    return entries


def stages_for(rule: str, n: int) -> List[int]:
    """A stage rule for a backbone with ``n`` stages: "penultimate" (Non-Local's res4; the default
    when a factory names none), "all_but_last" (BAM), "all" (families without a per-block hook)."""
    if rule == "all_but_last":
        return list(range(1, max(2, n)))
    if rule == "all":
        return list(range(1, n + 1))
    if rule == "penultimate":
        return [max(1, n - 1)]
    raise ModuleDoesNotFit(f"stages {rule!r} is neither a list of stage numbers nor one of "
                           "'penultimate', 'all_but_last', 'all'; fix 'stages'")


def _attach_at_block_sites(model: nn.Module, attr: str, make: Callable, in_chans: int) -> int:
    """Replace ``block.<attr>`` in every block that calls it, with channels seen in a dry run.

    Returns how many replaced modules were not ``nn.Identity`` (the family's own attention)."""
    owners = [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, attr, None), nn.Module)
              and not isinstance(m, AttentionSlot)]
    channels: Dict[str, int] = {}

    def record(name):
        def hook(module, args):
            channels.setdefault(name, args[0].shape[1])  # returns None: the input is left alone
        return hook

    hooks = [getattr(m, attr).register_forward_pre_hook(record(n)) for n, m in owners]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, 64, 64))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    replaced = 0
    for name, owner in owners:
        if name in channels:
            replaced += not isinstance(getattr(owner, attr), nn.Identity)
            setattr(owner, attr, make(channels[name]))
    return replaced


def _insert_after_stages(model, name, factory, options, stages, blocks) -> List[int]:
    entries = _stage_entries(model)
    n = len(entries)
    if stages is None:
        stages = getattr(factory, "default_stages", "penultimate")
    chosen = stages_for(stages, n) if isinstance(stages, str) else list(stages)
    for s in chosen:
        if not isinstance(s, int) or not 1 <= s <= n:
            raise ModuleDoesNotFit(f"stage {s!r} does not exist: this backbone has stages 1..{n}; fix 'stages'")
    make = _slot_factory(name, factory, options)
    for s in chosen:
        entry = entries[s - 1]
        path, channels = entry["module"], entry["num_chs"]
        stage = model.get_submodule(path)
        k = int(blocks or 1)
        if isinstance(stage, nn.Sequential) and len(stage) >= 2 * k - 1:
            # Every other residual block counted from the stage's end, as in the paper's 5-block model.
            after = {len(stage) - 1 - 2 * i for i in range(k)}
            items = []
            for i, (child_name, child) in enumerate(stage.named_children()):
                items.append((child_name, child))
                if i in after:
                    items.append((f"attn{i}", make(channels)))
            new = nn.Sequential(OrderedDict(items))
        elif k == 1:
            new = nn.Sequential(OrderedDict([("stage", stage), ("attn", make(channels))]))
        else:
            raise ModuleDoesNotFit(f"stage {s} ({path}) is not a sequence of blocks; use blocks: 1 there")
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
    return chosen


def build(backbone: str, attention: Optional[str] = None, *, backbone_kwargs: Optional[Dict] = None, **options) -> nn.Module:
    """A timm model with ``attention`` attached; ``None``/``"none"`` gives the plain baseline.

    ``options`` are the module's own (``reduction=8``) plus ``placement`` ("block"/"stage"),
    ``stages`` (1-based, default the penultimate stage) and ``blocks`` (per stage).
    The result carries ``model.attnbench_attachment`` (an :class:`Attachment`).
    """
    import timm

    family = backbone_family(backbone)
    kwargs = dict(backbone_kwargs or {})
    kwargs["pretrained"] = False
    if is_baseline(attention):
        if options:
            raise AttnBenchError(f"options {sorted(options)} given without an attention module; drop them or name a module")
        model = timm.create_model(backbone, **kwargs)
        model.attnbench_attachment = Attachment("none", "none")
        return model

    factory = get_module(attention)
    attach, module_options = split_options(options)
    placement = attach.get("placement") or getattr(factory, "placement", "block")
    if placement not in PLACEMENTS:
        raise AttnBenchError(f"placement {placement!r} for module {attention!r} is not one of {PLACEMENTS}")
    check_module_options(attention, factory, module_options)

    stages, replaced = None, 0
    if placement == "block" and family not in BLOCK_HOOKS and "placement" not in attach:
        placement = "stage"  # no per-block hook in this family: after every stage output instead
        attach.setdefault("stages", "all")
    if placement == "block":
        if family not in BLOCK_HOOKS:
            raise ModuleDoesNotFit(
                f"module {attention!r} wants per-block placement, which attnbench supports for "
                f"{', '.join(sorted(BLOCK_HOOKS))} backbones, not {backbone!r} ({family}); use placement: stage"
            )
        if "stages" in attach or "blocks" in attach:
            raise AttnBenchError(f"'stages'/'blocks' apply to placement: stage, not to module {attention!r} per block")
        make = _slot_factory(attention, factory, module_options)
        if family == "resnet":
            block_args = dict(kwargs.pop("block_args", {}) or {})
            block_args["attn_layer"] = make
            model = timm.create_model(backbone, block_args=block_args, **kwargs)
        else:
            model = timm.create_model(backbone, **kwargs)
            replaced = _attach_at_block_sites(model, BLOCK_HOOKS[family], make, kwargs.get("in_chans", 3))
    else:
        model = timm.create_model(backbone, **kwargs)
        stages = _insert_after_stages(model, attention, factory, module_options, attach.get("stages"), attach.get("blocks"))

    sites = [n for n, m in model.named_modules() if isinstance(m, AttentionSlot)]
    model.attnbench_attachment = Attachment(attention, placement, sites, stages, replaced)
    return model


def attention_parameters(model: nn.Module) -> int:
    """Parameters that live inside attached attention modules."""
    return sum(p.numel() for m in model.modules() if isinstance(m, AttentionSlot) for p in m.parameters())


def adapt_stem(model: nn.Module, kernel_size: int = 3, stride: int = 1, maxpool: bool = False) -> nn.Module:
    """Small-input stem for timm ResNets (CIFAR-style): one kxk conv, optional max-pool.

    ImageNet's 7x7/2 conv + 3x3/2 max-pool would shrink a 28x28 image to 7x7 before res2.
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ModuleDoesNotFit(f"small-input stem needs a timm ResNet (conv1 + maxpool), not {type(model).__name__}; drop training.stem")
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    if not maxpool:
        model.maxpool = nn.Identity()
    return model
