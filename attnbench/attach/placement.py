"""Where a module goes inside a timm model: stages, block slots, spatial convs, native attention.

A *site* is one place a module is built for: a block's attention slot (``block``), a block's
spatial convolution (``conv``) or a stage output (``stage``). One dry run at the suite's input
size records every site's input shape, so a factory can be given the context it declares
(:data:`CONTEXT_KEYS`) -- e.g. timm's ``BottleneckAttn`` needs the feature size it will see.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ModuleDoesNotFit, Unsupported
from .contract import CONTEXT_KEYS  # the contract's list (also imported from here)

# timm families and the block attributes that hold their per-block attention (None/Identity when
# absent). The first is where a ``block`` module goes; all of them are searched for native attention.
BLOCK_SLOTS = {
    "resnet": ("se",),  # ResNet/ResNeXt BasicBlock/Bottleneck: after the last BN, before the add
    "efficientnet": ("se",),  # EfficientNet, MobileNetV2, MixNet, ... (_efficientnet_blocks)
    "mobilenetv3": ("se",),
    "regnet": ("se",),
    "byobnet": ("attn_last", "attn"),  # attn_last: after the last conv + norm, before the add
}
# Short names for the native attention layers timm's families ship.
NATIVE_LABELS = {
    "SqueezeExcite": "SE",
    "SEModule": "SE",
    "EffectiveSEModule": "eSE",
    "EcaModule": "ECA",
    "CecaModule": "ECA",
    "CbamModule": "CBAM",
    "LightCbamModule": "CBAM",
    "GlobalContext": "GC",
}

# Block kinds known by class. A module's official code may put it in a different place per kind (ECA-Net:
# at the end of a ResNet's residual branch, after a MobileNetV2 block's projection), so a factory's
# ``placement`` may be a dict {kind: placement or None (no module in such blocks), "default": ...}.
# A Bottleneck whose 3x3 conv is grouped is a "resnext".
BLOCK_KINDS = {
    ("timm.models.resnet", "BasicBlock"): "basic",
    ("timm.models.resnet", "Bottleneck"): "bottleneck",
    ("timm.models._efficientnet_blocks", "InvertedResidual"): "inverted_residual",
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv"): "depthwise_separable",
}

# Layers a module goes right after, per block class (the layer is wrapped as Sequential(layer, module)):
# ``output``: the last norm of an inverted residual's branch, after the projection conv (ECA-Net's and
# Triplet Attention's MobileNetV2; in ResNets ``output`` is the block slot, which sits there already);
# ``after_conv``: the block's spatial conv, before its norm (SimAM's official ResNets and MobileNetV2:
# a BasicBlock's second 3x3, a Bottleneck's 3x3, an inverted residual's depthwise conv).
AFTER_LAYERS = {
    "output": {"InvertedResidual": "bn3", "DepthwiseSeparableConv": "bn2"},
    "after_conv": {
        "BasicBlock": "conv2",
        "Bottleneck": "conv2",
        "InvertedResidual": "conv_dw",
        "DepthwiseSeparableConv": "conv_dw",
    },
}


def block_kind(module: nn.Module) -> str:
    """ "basic", "bottleneck", "resnext", "inverted_residual", "depthwise_separable", or "" (not a known block)."""
    kind = BLOCK_KINDS.get((type(module).__module__, type(module).__name__), "")
    conv = getattr(module, "conv2", None)
    return "resnext" if kind == "bottleneck" and isinstance(conv, nn.Conv2d) and conv.groups > 1 else kind


def block_kinds(model: nn.Module) -> List[str]:
    """The known block kinds in a model, in module order."""
    return list(dict.fromkeys(k for k in map(block_kind, model.modules()) if k))


def resolve_placement(spec, kinds: Sequence[str], name: str) -> Tuple[str, Tuple[str, ...]]:
    """(placement, kinds without a module) for a factory's ``placement`` attribute: a string, or a dict
    from block kind (or "default") to a placement or None."""
    if not isinstance(spec, dict):
        return spec or "block", ()
    default = spec.get("default", "block")
    chosen = {k: spec.get(k, default) for k in kinds}
    used = sorted(set(p for p in chosen.values() if p is not None)) or [default or "block"]
    if len(used) > 1:
        raise ModuleDoesNotFit(
            f"module {name!r} asks for placements {used} in different blocks of this backbone "
            "(one per model); set placement explicitly"
        )
    return used[0], tuple(k for k, p in chosen.items() if p is None)


@dataclass
class Site:
    """One place a module is built for, with the context a factory may ask for."""

    owner: nn.Module
    attr: str
    path: str
    stage: int = 0  # 1-based
    block_index: int = 0  # 0-based, within the stage
    channels: int = 0
    out_channels: int = 0
    stride: int = 1
    feat_size: Tuple[int, int] = (0, 0)  # (H, W) of the site's input at the suite's input size
    conv_groups: int = 1  # groups of the replaced conv (conv placement)
    kind: str = ""  # the block's kind (BLOCK_KINDS), "" outside known blocks
    unwrap: Optional[Tuple[nn.Module, str, nn.Module]] = None  # (block, attr, layer) a wrapper replaced
    expect_channels: int = 0  # a stage's channels as its feature_info says (a layout check); 0: unknown

    def context(self) -> Dict:
        return {
            "feat_size": self.feat_size,
            "stride": self.stride,
            "stage": self.stage,
            "block_index": self.block_index,
            "out_channels": self.out_channels,
            "conv_groups": self.conv_groups,
            "block_kind": self.kind,
        }

    def restore(self) -> None:
        """Put back the layer a wrapper (``output``/``after_conv`` placement) took the place of."""
        if self.unwrap is not None:
            block, attr, layer = self.unwrap
            setattr(block, attr, layer)


def declared_context(factory: Callable) -> Tuple[str, ...]:
    """The context keywords a factory names in its signature (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return ()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(k for k in CONTEXT_KEYS if k in params and params[k].kind in named)


def stage_entries(model: nn.Module) -> List[dict]:
    """feature_info entries that are stages (a leading stem or activation entry is dropped)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ModuleDoesNotFit(f"backbone {type(model).__name__} reports no feature_info, so no stage to attach after")
    entries = [dict(e) for e in info]
    names = {name for name, _ in model.named_modules()}
    missing = next((e.get("module") for e in entries if e.get("module") not in names), None)
    if missing is not None:  # HRNet: its feature_info names the modules of its features_only variant ('stem', 'stage1')
        raise Unsupported(
            f"{type(model).__name__}'s feature_info names {missing!r}, which is not one of its modules, so "
            "attnbench cannot find its stages to attach after (nor a block slot in this family); pick a "
            "backbone of another family (resnet, efficientnet, regnet, convnext, ...)"
        )
    while entries:
        sub = model.get_submodule(entries[0]["module"])
        if "stem" in entries[0]["module"] or not list(sub.children()):
            entries.pop(0)
        else:
            break
    return entries


STAGE_RULES = ("all_but_last", "all_but_first", "all", "penultimate", "last")


def stages_problem(stages) -> Optional[str]:
    """What is wrong with a ``stages`` option as such (before any backbone is known), or None: a rule name or a
    non-empty list of distinct 1-based stage numbers."""
    if isinstance(stages, str):
        return None if stages in STAGE_RULES else f"stages {stages!r} is not one of {', '.join(STAGE_RULES)}"
    if not isinstance(stages, list) or not stages:
        return (
            f"stages must be a rule ({', '.join(STAGE_RULES)}) or a non-empty list of 1-based stage numbers, "
            f"got {stages!r}"[:200]
        )
    bad = next((s for s in stages if not isinstance(s, int) or isinstance(s, bool) or s < 1), None)
    if bad is not None:
        return f"stage {bad!r} is not a 1-based stage number (1 = the first stage)"
    if len(set(stages)) != len(stages):
        return f"stages {stages!r} names a stage twice"
    return None


def stages_for(rule: str, n: int) -> List[int]:
    """A stage rule for a backbone with ``n`` stages: "penultimate" (Non-Local's res4; the default
    stage placement), "all_but_last" (BAM), "all_but_first" (GCNet's c3-c5 on a ResNet), "all" (every
    stage: the block/conv default), "last" (BoTNet/HaloNet-style self-attention)."""
    rules = {
        "all_but_last": list(range(1, max(2, n))),
        "all_but_first": list(range(min(2, n), n + 1)),
        "all": list(range(1, n + 1)),
        "penultimate": [max(1, n - 1)],
        "last": [n],
    }
    if rule not in rules:  # (STAGE_RULES names these, for validation before a backbone is known)
        raise ModuleDoesNotFit(
            f"stages {rule!r} is neither a list of stage numbers nor one of "
            f"{', '.join(repr(r) for r in rules)}; fix 'stages'"
        )
    return rules[rule]


def choose_stages(stages, n: int) -> List[int]:
    """A rule name or a list of 1-based stage numbers, checked against the backbone's ``n`` stages."""
    chosen = stages_for(stages, n) if isinstance(stages, str) else list(stages)
    for s in chosen:
        if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= n:
            raise ModuleDoesNotFit(f"stage {s!r} does not exist: this backbone has stages 1..{n}; fix 'stages'")
    return chosen


def _module_order(model: nn.Module) -> Dict[str, int]:
    return {name: i for i, (name, _) in enumerate(model.named_modules())}


def assign_stages(model: nn.Module, sites: List[Site]) -> None:
    """Stage of a site: the first stage (feature_info entry) that holds it or follows it in the
    model's module order; ``block_index`` counts the sites within that stage."""
    order = _module_order(model)
    ends = []  # module-order position of each stage's last submodule
    for e in stage_entries(model):
        prefix = e["module"] + "."
        ends.append(max(i for name, i in order.items() if name == e["module"] or name.startswith(prefix)))
    counts: Dict[int, int] = {}
    for site in sites:
        pos = order[site.path.rpartition(".")[0]]
        site.stage = next((k + 1 for k, end in enumerate(ends) if pos <= end), len(ends))
        site.block_index = counts.get(site.stage, 0)
        counts[site.stage] = site.block_index + 1


def probe_inputs(model: nn.Module, sites: List[Site], input_size: Sequence[int], in_chans: int) -> None:
    """One forward pass at the suite's input size; fills each site's channels and feat_size.

    A slot that holds ``None`` (timm's ResNet blocks without attention) gets a pass-through
    probe for the run and is restored afterwards."""
    shapes: Dict[str, Tuple[int, ...]] = {}

    def record(path):
        def hook(module, args):
            shapes.setdefault(path, tuple(args[0].shape[1:]))  # returns None: the input is left alone

        return hook

    emptied, hooks = [], []
    for site in sites:
        target = getattr(site.owner, site.attr)
        if target is None:
            target = nn.Identity()
            setattr(site.owner, site.attr, target)
            emptied.append(site)
        hooks.append(target.register_forward_pre_hook(record(site.path)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, *input_size))
    finally:
        for h in hooks:
            h.remove()
        for site in emptied:
            setattr(site.owner, site.attr, None)
        model.train(was_training)
    for site in sites:
        if site.path in shapes:
            shape = shapes[site.path]
            problem = layout_problem(shape, site.expect_channels)
            if problem:
                raise Unsupported(
                    f"{type(model).__name__} feeds {site.path} {problem}, not an (N, C, H, W) feature "
                    "map: attention modules attach to convolutional feature maps; pick a convolutional "
                    "backbone (resnet, efficientnet, regnet, convnext, ...)"
                )
            c, h, w = shape
            site.channels, site.feat_size = c, (h, w)
            site.out_channels = site.out_channels or c


def layout_problem(shape: Tuple[int, ...], expect_channels: int = 0) -> Optional[str]:
    """What a site's input (without the batch) is when it is not a (C, H, W) map, or None: a transformer's
    tokens ``(N, L, C)``, or a channels-last map ``(N, H, W, C)`` (Swin) whose last size is the stage's width."""
    if len(shape) != 3:
        return f"a {len(shape) + 1}-D tensor (1, {', '.join(map(str, shape))}) (tokens?)"
    if expect_channels and shape[0] != expect_channels and shape[-1] == expect_channels:
        return f"channels-last maps (1, {', '.join(map(str, shape))}) with {expect_channels} channels last"
    return None


def is_slot(module: nn.Module) -> bool:
    """An attached module's wrapper (``attach.AttentionSlot`` marks itself; no import, no circle)."""
    return bool(getattr(module, "attnbench_slot", False))


def block_sites(model: nn.Module, attrs: Sequence[str]) -> List[Site]:
    """Every block that owns one of ``attrs`` (holding a module or ``None``), in module order."""
    sites = []
    for name, m in model.named_modules():
        if is_slot(m):
            continue
        for attr in attrs:
            if attr in m._modules or (attr in vars(m) and vars(m)[attr] is None):
                sites.append(Site(m, attr, f"{name}.{attr}" if name else attr, kind=block_kind(m)))
                break
    return sites


def after_sites(model: nn.Module, placement: str, backbone: str) -> List[Site]:
    """Wrap the layer ``placement`` goes after (``AFTER_LAYERS``) in every known block as
    Sequential(layer, placeholder); one site per placeholder (``Site.restore`` unwraps it)."""
    table = AFTER_LAYERS[placement]
    sites = []
    for name, m in list(model.named_modules()):
        kind = block_kind(m)
        attr = table.get(type(m).__name__) if kind else None
        layer = getattr(m, attr, None) if attr else None
        if isinstance(layer, nn.Module):
            wrapper = nn.Sequential(OrderedDict([("layer", layer), ("attn", nn.Identity())]))
            setattr(m, attr, wrapper)
            path = f"{name}.{attr}" if name else attr
            sites.append(Site(wrapper, "attn", f"{path}.attn", kind=kind, unwrap=(m, attr, layer)))
    if not sites:
        where = ", ".join(f"{cls}.{attr}" for cls, attr in table.items())
        raise Unsupported(
            f"placement {placement!r} goes after {where} of timm's ResNet and EfficientNet/MobileNet "
            f"blocks, and {backbone!r} has none; use placement: block or stage"
        )
    return sites


def native_sites(model: nn.Module, family: str) -> List[Site]:
    """Block slots of the family that hold timm's own attention (not empty, not ours)."""
    found = []
    for attr in BLOCK_SLOTS.get(family, ()):
        for site in block_sites(model, (attr,)):
            m = getattr(site.owner, attr)
            if m is not None and not isinstance(m, nn.Identity) and not is_slot(m):
                found.append(site)
    return found


def native_label(modules: Sequence[nn.Module]) -> str:
    names = list(dict.fromkeys(type(m).__name__ for m in modules))
    return "+".join(NATIVE_LABELS.get(n, n) for n in names)


# Spatial convolutions of timm's ResNet blocks, as SKNet replaces them (timm's sknet.py):
# BasicBlock's first 3x3 (with the stride), Bottleneck's 3x3 (with the stride). (conv, norm, act)
CONV_SITES = {"BasicBlock": ("conv1", "bn1", "act1"), "Bottleneck": ("conv2", "bn2", "act2")}


def conv_sites(model: nn.Module, backbone: str) -> List[Site]:
    """The spatial conv of every ResNet/ResNeXt block, with its width and stride."""
    sites = []
    for name, m in model.named_modules():
        names = CONV_SITES.get(type(m).__name__) if type(m).__module__.startswith("timm.models.resnet") else None
        conv = getattr(m, names[0], None) if names else None
        if isinstance(conv, nn.Conv2d):
            sites.append(
                Site(
                    m,
                    names[0],
                    f"{name}.{names[0]}",
                    out_channels=conv.out_channels,
                    stride=conv.stride[0],
                    conv_groups=conv.groups,
                    kind=block_kind(m),
                )
            )
    if not sites:
        raise Unsupported(
            f"placement 'conv' replaces the 3x3 conv of timm's ResNet/ResNeXt blocks, and {backbone!r} "
            "has none (attnbench does not replace other families' convs); use placement: block or stage"
        )
    return sites


def drop_norm_act(site: Site) -> None:
    """The module brings its own norm + activation (SK, as timm's SelectiveKernel): the block's go."""
    _, norm, act = CONV_SITES[type(site.owner).__name__]
    setattr(site.owner, norm, nn.Identity())
    setattr(site.owner, act, nn.Identity())


def stage_sites(model: nn.Module, chosen: List[int], blocks: Optional[int]) -> List[Site]:
    """Insert placeholders after the chosen stages (every other block from a stage's end when
    ``blocks`` > 1: the Non-Local paper's layout); returns one site per placeholder."""
    entries = stage_entries(model)
    sites = []
    k = int(blocks or 1)
    for s in chosen:
        path = entries[s - 1]["module"]
        expect = int(entries[s - 1].get("num_chs") or 0)
        stage = model.get_submodule(path)
        if isinstance(stage, nn.Sequential) and len(stage) >= 2 * k - 1:
            after = {len(stage) - 1 - 2 * i for i in range(k)}
            items = []
            for i, (child_name, child) in enumerate(stage.named_children()):
                items.append((child_name, child))
                if i in after:
                    items.append((f"attn{i}", nn.Identity()))
        elif k == 1:
            items = [("stage", stage), ("attn", nn.Identity())]
        else:
            raise ModuleDoesNotFit(f"stage {s} ({path}) is not a sequence of blocks; use blocks: 1 there")
        new = nn.Sequential(OrderedDict(items))
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
        for i, (child_name, _) in enumerate(c for c in items if c[0].startswith("attn")):
            sites.append(Site(new, child_name, f"{path}.{child_name}", stage=s, block_index=i, expect_channels=expect))
    return sites
