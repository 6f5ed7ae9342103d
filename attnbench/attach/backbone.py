"""Build a timm backbone (``pretrained=False`` always) with an attention module attached.

Baselines: ``build(b)`` / ``"none"`` is the **bare** backbone -- a family's native attention
(EfficientNet's and MobileNetV3's SE, RegNetY's SE, SE-ResNet's SE, ...) replaced by Identity and
counted in the record; ``build(b, "native")`` is timm's model as built. Every module row is built
on the bare backbone, so its Δ is what the module costs, unless ``keep_native: true`` (conv and
stage placements only) keeps the native attention beside it.

Weights: ``init="measurement"`` (the default, every measurement path) turns the zeros a training init
puts at the end of residual branches (timm's ``zero_init_last``, Non-Local's BN, GCNet's last conv)
non-zero by one stated rule (``initialise.py``), so every module sees its block's real activations;
``init="train"`` (accuracy training) keeps the training init. The record says which (``init``).

Five placements (``placement`` option; default the factory's ``placement`` attribute, which may differ
per block kind -- ``placement.BLOCK_KINDS`` -- where the module's official code does):
- ``block``: the block's attention slot -- in ResNets/ResNeXts the end of the residual branch (after the
  last BatchNorm, before the addition: the SE-ResNet layout), in EfficientNet/MobileNetV2/MobileNetV3
  blocks the SE slot on the expanded channels after the depthwise conv; RegNet, ByobNet. ``stages``
  restricts it (GCNet's c3-c5 = ``stages: [2, 3, 4]``).
- ``output``: after the last norm of the residual branch, before the addition: in an inverted residual
  after the projection conv + BN, on the block's output channels (ECA-Net's and Triplet Attention's
  MobileNetV2); in a ResNet the block slot (the same place).
- ``after_conv``: right after the block's spatial conv, before its norm (SimAM's official code): a
  BasicBlock's second 3x3, a Bottleneck's 3x3, an inverted residual's depthwise conv.
- ``conv``: the module *replaces* the block's spatial convolution, keeping width and stride --
  SKNet's layout, as in timm's sknet.py: a ResNet/ResNeXt Bottleneck's 3x3 ``conv2``, a BasicBlock's
  first 3x3 ``conv1``. The block's norm + activation after that conv stay, unless the factory sets
  ``includes_norm_act = True`` (SK brings its own BN + ReLU per branch, as timm's SelectiveKernel).
- ``stage``: whole blocks inserted after chosen stages (Non-Local's layout), found through timm's
  ``feature_info``; works for any family that reports it.
``stages`` is 1-based over feature_info's stages (ResNet: 1=res2 ... 4=res5) or a rule
("all", "last", "penultimate", "all_but_last"); a factory's ``default_stages`` applies to its own
placement. ``blocks`` (stage placement) puts that many after every other block from a stage's end.

Context keywords: a factory gets ``factory(channels, **options)`` plus any of ``feat_size`` ((H, W)
of the site's input at the suite's ``input_size``), ``stride`` (of the replaced conv; 1 elsewhere),
``stage`` (1-based), ``block_index`` (0-based within the stage), ``out_channels`` (of the
replaced conv; ``channels`` elsewhere), ``conv_groups`` (of the replaced conv; 1 elsewhere) and ``block_kind``
(``placement.BLOCK_KINDS``; "" outside known blocks) that its signature *names* (``**kwargs`` gets none). They
come from one dry run at ``input_size``. A conv-placed factory must name ``out_channels``/``stride``
where the conv changes width or resolution.

Every attached module is wrapped in an :class:`AttentionSlot`, which checks the output shape and
marks the site so parameter and FLOP counts can be split into backbone and attention parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..core.baselines import NATIVE
from ..core.settings import signature_problem
from ..core.where import describe  # noqa: F401 -- the `where` text, torch-free for the report layer
from ..errors import AttnBenchError, ModuleDoesNotFit, UnknownNameError, Unsupported, UsageError
from ..guard.cell import contained, escape_text, is_out_of_memory
from ..registry import get_module, is_baseline
from .contract import (
    ALIASED_ADVICE,
    PLACEMENTS,
    binding_advice,
    binding_problem,
    class_folder,
    current_roots,
    declared_limits,
    first_line,
    forward_line,
    package_roots,
    plugin_frame,
    shares_memory,
)
from .initialise import INITS, MEASUREMENT, measurement_init
from .placement import (
    BLOCK_SLOTS,
    Site,
    after_sites,
    assign_stages,
    block_kinds,
    block_sites,
    choose_stages,
    conv_sites,
    declared_context,
    drop_norm_act,
    native_label,
    native_sites,
    probe_inputs,
    resolve_placement,
    stage_entries,
    stage_sites,
    stages_problem,
)

ATTACH_OPTIONS = ("placement", "stages", "blocks", "keep_native")
# Names the Non-Local paper's users expect; mapped onto the generic stage options.
ALIASES = {"nonlocal_stages": "stages", "nonlocal_blocks": "blocks"}


@dataclass(frozen=True)
class Attachment:
    """Where a module sits in a built model and what happened to the native attention; copied into every record."""

    module: str
    placement: str  # "none" (bare backbone), "native" (as timm builds it), "block", "conv", "stage"
    sites: List[str] = field(default_factory=list)
    stages: Optional[List[int]] = None  # chosen stages; None for block/conv in every stage
    native: Optional[str] = None  # the backbone's own attention, e.g. "SE"; None: it has none
    native_removed: int = 0  # native sites emptied (bare backbone) or taken by the module
    native_kept: int = 0
    init: str = MEASUREMENT  # "measurement" (zero-initialised weights made non-zero, initialise.py) or "train"
    reinitialised: int = 0  # parameters measurement_init changed

    @property
    def replaced(self) -> int:
        """Native sites no longer there (the name older records use)."""
        return self.native_removed

    def as_dict(self) -> dict:
        return {
            "module": self.module,
            "placement": self.placement,
            "sites": len(self.sites),
            "stages": self.stages,
            "native": self.native,
            "native_removed": self.native_removed,
            "native_kept": self.native_kept,
            "init": self.init,
            "reinitialised": self.reinitialised,
        }


class ModuleFailed(ModuleDoesNotFit):
    """An attached module raised inside its forward (or returned what its site cannot use); the message names the
    module, its site and the plugin's line. ``channels`` and ``input_shape`` say what the module got there."""

    def __init__(self, message: str, channels: int = 0, input_shape: Tuple = ()):
        super().__init__(message)
        self.channels, self.input_shape = channels, tuple(input_shape)


class AttentionSlot(nn.Module):
    """One attached module; fails clearly if its output is not the shape its site needs, and names
    the module, the site and the plugin's own file:line when the module raises."""

    attnbench_slot = True  # how placement.py recognises one without importing this module

    def __init__(
        self,
        module: nn.Module,
        name: str,
        channels: int,
        out_channels: Optional[int] = None,
        stride: int = 1,
        site: str = "",
        stage: int = 0,
    ):
        super().__init__()
        self.attn = module
        self.module_name = name
        self.channels = channels
        self.out_channels = out_channels or channels
        self.stride = stride
        self.site = site  # e.g. 'layer3.2.se'; set by build()
        self.stage = stage  # 1-based stage of the site (0: unknown); direct timings are broken down by it

    def forward(self, x):
        try:  # no per-call work: latency is measured through this forward
            y = self.attn(x)
        except AttnBenchError:  # CellTimeout, OutOfMemory ... pass through unchanged
            raise
        except BaseException as exc:  # sys.exit(), a KeyboardInterrupt no signal raised: its cell fails, not the run
            if is_out_of_memory(exc) or not contained(exc):
                raise
            raise ModuleFailed(self._failure(exc, x), self.channels, tuple(getattr(x, "shape", ()))) from exc
        n, _, h, w = x.shape
        want = (n, self.out_channels, -(-h // self.stride), -(-w // self.stride))
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            need = (
                "an attention module must keep the (N, C, H, W) shape"
                if want == tuple(x.shape)
                else f"in place of a conv it must return {want}"
            )
            line = forward_line(self.attn)
            raise ModuleDoesNotFit(
                f"attention module {self.module_name!r}{self._where()}"
                f"{' (forward at ' + line + ')' if line else ''} returned {got} for input "
                f"{tuple(x.shape)}; {need}"
            )
        if 0 in y.stride() and shares_memory(y):  # a stride test per call; the stride-0 case is rare
            line = forward_line(self.attn)
            raise ModuleFailed(
                f"attention module {self.module_name!r}{self._where()} ({self.channels} channels, input "
                f"{tuple(x.shape)}){', ' + line if line else ''}: returned an expand()-style view whose "
                f"elements share memory (strides {tuple(y.stride())}); {ALIASED_ADVICE}",
                self.channels,
                tuple(x.shape),
            )
        return y

    def _where(self) -> str:
        """' at layer3.2' for a block's slot (the block names the site), else the inserted/replaced path."""
        owner, _, attr = self.site.rpartition(".")
        site = owner if owner and any(attr in slots for slots in BLOCK_SLOTS.values()) else self.site
        return f" at {site}" if site else ""

    def _failure(self, exc: BaseException, x) -> str:
        """Site and plugin line first: a row's note keeps the first 300 characters."""
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        line = plugin_frame(exc, class_folder(self.attn) + current_roots())
        what = first_line(exc) if isinstance(exc, Exception) else escape_text(exc)
        return (
            f"attention module {self.module_name!r}{self._where()} ({self.channels} channels, input {shape})"
            f"{', ' + line if line else ''}: {what}"
        )


def failure_site(model: Optional[nn.Module], exc: BaseException) -> str:
    """Where in ``model`` an error raised outside every attached module happened (a block's in-place
    ``x += shortcut`` on what the module returned): '' when the traceback holds no part of the model with
    exactly one attached module, else "in layer1.0 at timm/models/resnet.py:163, after attention module 'x' at
    layer1.0 (64 channels; forward at gates.py:12)" -- the module, its site and the plugin's line."""
    if model is None or isinstance(exc, AttnBenchError) or exc.__traceback__ is None:
        return ""
    paths = {id(m): name for name, m in model.named_modules()}
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    for tb in reversed(frames):
        owner = tb.tb_frame.f_locals.get("self")
        if not isinstance(owner, nn.Module) or id(owner) not in paths or isinstance(owner, AttentionSlot):
            continue
        slots = [m for m in owner.modules() if isinstance(m, AttentionSlot)]
        if len(slots) != 1:
            continue
        slot, code = slots[0], tb.tb_frame.f_code
        line = forward_line(slot.attn)
        where = paths[id(owner)] or type(owner).__name__
        return (
            f"in {where} at {'/'.join(Path(code.co_filename).parts[-3:])}:{tb.tb_lineno}, after attention module "
            f"{slot.module_name!r}{slot._where()} ({slot.channels} channels{'; forward at ' + line if line else ''})"
        )
    return ""


def list_backbones(pattern: str = "") -> List[str]:
    import timm

    return timm.list_models(pattern or "*")


def backbone_family(backbone: str) -> str:
    """timm's model file for a name, e.g. 'resnet' for resnet50 and seresnext26d_32x4d."""
    import timm

    if not timm.is_model(backbone):
        raise UnknownNameError("backbone", backbone, timm.list_models(), "see `attnbench list backbones`")
    return timm.models.model_entrypoint(backbone).__module__.rsplit(".", 1)[-1]


def fixed_size_problem(
    backbone: str, input_size: Union[int, Sequence[int]], backbone_kwargs: Optional[Dict] = None
) -> Optional[str]:
    """Why ``backbone`` cannot take ``input_size`` as timm builds it, or None. ViT, DeiT, Mixer, Swin, MaxViT ...
    are built for one input size (timm's ``pretrained_cfg.fixed_input_size``: position embeddings, token-mixing
    MLPs, windows), unless ``img_size`` (or ``dynamic_img_size``) in ``backbone_kwargs`` says otherwise."""
    import timm

    kw = backbone_kwargs or {}
    cfg = timm.models.get_pretrained_cfg(backbone)
    if kw.get("dynamic_img_size") or cfg is None or not getattr(cfg, "fixed_input_size", False):
        return None
    want = kw.get("img_size", tuple(cfg.input_size[1:]))
    want = (want, want) if isinstance(want, int) else tuple(want)
    got = _size(input_size)
    if tuple(got) == want:
        return None
    return (
        f"backbone {backbone!r} takes only {want[0]}x{want[1]} inputs as timm builds it (a fixed input size: "
        f"position embeddings, token mixing or windows made for it), not {got[0]}x{got[1]}; use input_size "
        f"{want[0]}x{want[1]}, or backbone_options img_size: [{got[0]}, {got[1]}]"
    )


def split_options(options: Dict) -> tuple[Dict, Dict]:
    """(attachment options, module options); aliases such as nonlocal_stages are mapped."""
    attach, module = {}, {}
    for key, value in options.items():
        key = ALIASES.get(key, key)
        (attach if key in ATTACH_OPTIONS else module)[key] = value
    return attach, module


def check_module_options(name: str, factory: Callable, options: Dict) -> None:
    """Fail before building anything if the factory cannot take these options."""
    problem = binding_problem(factory, options, declared_context(factory))  # context: the harness fills it
    if problem and problem[1] == "options":
        raise UsageError(f"module {name!r} does not accept options {sorted(options)}: {problem[0]}; fix its options")
    if problem:  # it cannot be called with a channel count alone: only an adapter fixes that
        raise UsageError(
            f"module {name!r} cannot be called as factory(channels, **options): {problem[0]}; "
            f"{binding_advice(factory, declared_context(factory), name)}"
        )
    problem = signature_problem(factory, options)  # reduction: -4 would build a 1-channel gate without a word
    if problem:
        raise UsageError(f"module {name!r}: {problem}; fix its options")


def _attach_defaults(placement: str = "block", stages=None, blocks: int = 1, keep_native: bool = False):
    """The attachment options and their defaults, checked by the same rule as a module's own options."""


def check_attach_options(options: Dict) -> None:
    """``blocks: -1``, ``keep_native: 'yes'``, ``placement: sideways`` or ``stages: []`` is refused before anything
    is built (an empty ``stages`` would silently fall back to the module's default stages)."""
    problem = signature_problem(_attach_defaults, options)
    placement = options.get("placement")
    if problem is None and "placement" in options:
        kinds = placement.values() if isinstance(placement, dict) else [placement]
        if (
            not isinstance(placement, (str, dict))
            or not placement
            or any(p is not None and p not in PLACEMENTS for p in kinds)
        ):
            problem = f"option placement={placement!r} is not one of {', '.join(PLACEMENTS)}"[:200]
    if problem is None and "stages" in options:
        problem = stages_problem(options["stages"])
    if problem:
        raise UsageError(f"{problem}; fix the module's options")


def _make_slot(name: str, factory: Callable, options: Dict, site: Site, declared: Sequence[str]) -> AttentionSlot:
    """Build the module for one site (with the context keywords its factory names) and wrap it."""
    context = {k: v for k, v in site.context().items() if k in declared}
    try:
        module = factory(site.channels, **options, **context)
    except AttnBenchError:
        raise
    except BaseException as exc:  # sys.exit() or a KeyboardInterrupt no signal raised in a plugin's constructor too
        if not contained(exc):
            raise
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else escape_text(exc)
        line = plugin_frame(exc, package_roots(factory) + class_folder(factory) + current_roots())
        raise ModuleDoesNotFit(
            f"attention module {name!r} failed to build at {site.path} ({site.channels} channels)"
            f"{', ' + line if line else ''}: {what}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModuleDoesNotFit(f"attention module {name!r} returned {type(module).__name__}, not a torch.nn.Module")
    like = next(site.owner.parameters(), None)  # the backbone's device and dtype
    if like is not None:
        module = module.to(device=like.device, dtype=like.dtype)
    return AttentionSlot(module, name, site.channels, site.out_channels, site.stride, site.path, site.stage)


def _check_conv_fit(name: str, site: Site, declared: Sequence[str]) -> None:
    for key, value, same in (("out_channels", site.out_channels, site.channels), ("stride", site.stride, 1)):
        if value != same and key not in declared:
            raise ModuleDoesNotFit(
                f"module {name!r} cannot replace {site.path} ({site.channels}->{site.out_channels} "
                f"channels, stride {site.stride}): its factory takes no {key!r}; use placement: block"
            )


def _check_limits(name: str, factory: Callable, sites: Sequence[Site], input_size: Tuple[int, int]) -> None:
    """A site below the module's declared ``min_spatial`` makes the model ``Unsupported`` (with the reason), not a NaN row."""
    try:
        limits = declared_limits(factory)
    except ValueError as exc:
        raise ModuleDoesNotFit(f"module {name!r}: {exc}") from None
    for site in sites:
        why = limits.spatial(site.feat_size)
        if why:
            raise Unsupported(
                f"module {name!r} {why} at {site.path} (input {input_size[0]}x{input_size[1]}); use a larger input_size"
            )


def _size(input_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)


def _empty(sites: List[Site]) -> None:
    for site in sites:
        setattr(site.owner, site.attr, nn.Identity())


def _per_block_sites(model: nn.Module, backbone: str, family: str, placement: str) -> List[Site]:
    if placement == "conv":
        return conv_sites(model, backbone)
    if placement == "after_conv" or (placement == "output" and family != "resnet"):
        return after_sites(model, placement, backbone)
    if family not in BLOCK_SLOTS:  # block, or output in a family whose block slot is not at the branch's end
        raise ModuleDoesNotFit(
            f"per-block placement is supported for {', '.join(sorted(BLOCK_SLOTS))} backbones, "
            f"not {backbone!r} ({family}); use placement: stage"
        )
    return block_sites(model, BLOCK_SLOTS[family][:1])  # a ResNet's block slot is the branch's output already


def _sites(
    model: nn.Module,
    backbone: str,
    family: str,
    placement: str,
    attach: Dict,
    factory: Callable,
    own: bool,
    skip: Sequence[str] = (),
):
    """(sites, recorded stages) for a placement; stage placement inserts its placeholders here, ``output``
    and ``after_conv`` their wrappers (unwrapped again where no module goes). ``own``: the factory's own
    placement (its ``default_stages`` apply); ``skip``: block kinds its official code leaves without one."""
    rule = attach.get("stages") or (getattr(factory, "default_stages", None) if own else None)
    n = len(stage_entries(model))
    if placement == "stage":
        chosen = choose_stages(rule or "penultimate", n)
        return stage_sites(model, chosen, attach.get("blocks")), chosen
    if "blocks" in attach:
        raise UsageError(f"'blocks' applies to placement: stage, not to {placement} placement; drop it")
    sites = _per_block_sites(model, backbone, family, placement)
    assign_stages(model, sites)
    chosen = choose_stages(rule or "all", n)
    kept = [s for s in sites if s.stage in chosen and s.kind not in skip]
    kept_ids = {id(s) for s in kept}
    for site in sites:
        if id(site) not in kept_ids:
            site.restore()
    return kept, (None if sorted(set(chosen)) == list(range(1, n + 1)) else chosen)


def _initialised(model: nn.Module, attachment: Attachment, init: str) -> nn.Module:
    changed = measurement_init(model) if init == MEASUREMENT else []
    model.attnbench_attachment = replace(attachment, init=init, reinitialised=len(changed))
    return model


def build(
    backbone: str,
    attention: Optional[str] = None,
    *,
    backbone_kwargs: Optional[Dict] = None,
    input_size: Union[int, Sequence[int]] = 224,
    init: str = MEASUREMENT,
    **options,
) -> nn.Module:
    """A timm model with ``attention`` attached: ``None``/``"none"`` is the bare backbone, ``"native"``
    timm's model as built (see the module docstring).

    ``options`` are the module's own (``reduction=8``) plus ``placement``, ``stages``, ``blocks`` and
    ``keep_native``; ``input_size`` (int or (H, W)) is where context keywords are measured. ``init``:
    ``"measurement"`` (default: zero-initialised weights made non-zero, so every module sees real
    activations; see initialise.py) or ``"train"`` (timm's and the modules' training init, for training).
    The result carries ``model.attnbench_attachment`` (an :class:`Attachment`).
    """
    import timm

    if init not in INITS:
        raise UsageError(f"init {init!r} is not one of {INITS}")
    family = backbone_family(backbone)
    problem = fixed_size_problem(backbone, input_size, backbone_kwargs)
    if problem:
        raise UsageError(problem)
    kwargs = dict(backbone_kwargs or {}, pretrained=False)
    model = timm.create_model(backbone, **kwargs)
    native = native_sites(model, family)
    label = native_label([getattr(s.owner, s.attr) for s in native]) if native else None
    if is_baseline(attention) or attention == NATIVE:
        if options:
            raise UsageError(f"options {sorted(options)} given without an attention module; drop them or name a module")
        if attention == NATIVE:
            return _initialised(
                model, Attachment(NATIVE, NATIVE, [s.path for s in native], None, label, 0, len(native)), init
            )
        _empty(native)
        return _initialised(model, Attachment("none", "none", [], None, label, len(native)), init)

    factory = get_module(attention)
    attach, module_options = split_options(options)
    check_attach_options(attach)
    kinds = block_kinds(model)
    own_placement, skip = resolve_placement(getattr(factory, "placement", "block"), kinds, attention)
    placement = attach.get("placement") or own_placement
    skip = () if "placement" in attach else skip  # an explicit placement goes in every block
    if placement not in PLACEMENTS:
        raise UsageError(f"placement {placement!r} for module {attention!r} is not one of {PLACEMENTS}")
    check_module_options(attention, factory, module_options)
    declared = declared_context(factory)
    clash = sorted(set(module_options) & set(declared))
    if clash:
        raise UsageError(f"options {clash} of module {attention!r} are filled by attnbench from each site; drop them")
    keep = bool(attach.get("keep_native", False))
    if keep and native and (placement == "block" or (placement == "output" and family == "resnet")):
        raise UsageError(
            f"keep_native applies to conv, stage, after_conv and (outside ResNets) output placements; "
            f"a {placement} module {attention!r} takes the native attention's slot; drop keep_native"
        )
    own = placement == own_placement
    no_blocks = (placement in ("block", "output") and family not in BLOCK_SLOTS) or (
        placement in ("output", "after_conv") and not kinds
    )
    if no_blocks and "placement" not in attach:
        placement, own = "stage", False  # no per-block site in this family: after every stage output instead
        attach.setdefault("stages", "all")

    sites, stages = _sites(model, backbone, family, placement, attach, factory, own, skip)
    if not keep:
        _empty(native)
    probe_inputs(model, sites, _size(input_size), kwargs.get("in_chans", 3))
    for site in sites:
        if not site.channels:
            site.restore()
    sites = [s for s in sites if s.channels]  # slots the forward pass reaches
    _check_limits(attention, factory, sites, _size(input_size))
    for site in sites:
        if placement == "conv":
            _check_conv_fit(attention, site, declared)
        setattr(site.owner, site.attr, _make_slot(attention, factory, module_options, site, declared))
        if placement == "conv" and getattr(factory, "includes_norm_act", False):
            drop_norm_act(site)
    removed = 0 if keep else len(native)
    return _initialised(
        model,
        Attachment(attention, placement, [s.path for s in sites], stages, label, removed, len(native) - removed),
        init,
    )


@lru_cache(maxsize=None)
def _native_summary(backbone: str) -> Optional[Tuple]:
    import timm

    model = timm.create_model(backbone, pretrained=False)
    modules = [getattr(s.owner, s.attr) for s in native_sites(model, backbone_family(backbone))]
    if not modules:
        return None
    return (
        "+".join(dict.fromkeys(type(m).__name__ for m in modules)),
        native_label(modules),
        len(modules),
        sum(p.numel() for m in modules for p in m.parameters()),
    )


def native_attention(backbone: str) -> Optional[dict]:
    """The attention timm builds into ``backbone`` ({type, label, sites, params}), or None.

    Searched in the block slots of the families attnbench attaches to per block (see
    ``placement.BLOCK_SLOTS``); the planner adds a ``native`` row only where this is not None."""
    summary = _native_summary(backbone)
    return None if summary is None else dict(zip(("type", "label", "sites", "params"), summary))


def attention_parameters(model: nn.Module) -> int:
    """Parameters that live inside attached attention modules."""
    return sum(p.numel() for m in model.modules() if isinstance(m, AttentionSlot) for p in m.parameters())


def adapt_stem(model: nn.Module, kernel_size: int = 3, stride: int = 1, maxpool: bool = False) -> nn.Module:
    """Small-input stem for timm ResNets (CIFAR-style): one kxk conv, optional max-pool.

    ImageNet's 7x7/2 conv + 3x3/2 max-pool would shrink a 28x28 image to 7x7 before res2.
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ModuleDoesNotFit(
            f"small-input stem needs a timm ResNet (conv1 + maxpool), not {type(model).__name__}; drop training.stem"
        )
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    if not maxpool:
        model.maxpool = nn.Identity()
    return model
