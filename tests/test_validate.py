"""Published figures: every claim is a match or a difference whose explanation is checked by
building and counting the paper's variant -- never by a constant."""
import torch
from torch import nn

from attnbench import validate as v
from attnbench.attach import AttentionSlot
from attnbench.registry import get_module
from attnbench.validate import CLAIMS, render_validate, validate


def test_published_figures():
    rows = {r["what"]: r for r in validate()}
    assert len(rows) == len(CLAIMS) == 21
    assert not [r for r in rows.values() if r["status"] == "MISMATCH"]
    for what in ("SE-ResNet-50 params (M)", "SE-ResNet-101 params (M)", "CBAM-ResNet-50 params (M)", "SimAM params",
                 "CoordAtt MobileNetV2 params (M)", "SE-ResNet-50 added GFLOPs", "SKNet-50 params (M)",
                 "ResNeXt-50 32x4d params (M)"):
        assert rows[what]["status"] == "match", what
    assert rows["ResNet-50 GFLOPs"]["status"] == "explained difference"
    assert rows["SE block params at C=512, r=16"]["ours_raw"] == 33_312
    assert rows["SKNet-50 params (M)"]["ours_raw"] == 27_479_784  # timm's skresnext50_32x4d, see test_placement
    eca = next(c for c in CLAIMS if c.what == "ECA-ResNet-50 added params")
    assert rows[eca.what]["ours_raw"] == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7  # adaptive k over C = 256..2048
    assert eca.explained_by() == 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7 == 80  # official per-stage k = 3, 5, 5, 7
    assert "| SE-ResNet-50 params (M) |" in render_validate(list(rows.values()))


def test_no_explanation_is_a_constant(monkeypatch):
    """Change the models the explanations build (input 64 instead of 224, one extra parameter per attached
    module, a narrower SE block): every explanation's number must change with them."""
    explained = [c for c in CLAIMS if c.explained_by is not None]
    assert len(explained) == 7
    before = {c.what: c.explained_by() for c in explained}  # at 224: cached by test_published_figures
    build = v.build

    def perturbed(*args, **kwargs):
        model = build(*args, **kwargs)
        for slot in model.modules():
            if isinstance(slot, AttentionSlot):
                slot.register_parameter("extra", nn.Parameter(torch.zeros(1)))
        return model

    try:
        monkeypatch.setattr(v, "SIZE", 64)  # FLOP explanations must follow the input size of what they count
        at_64 = {c.what: c.explained_by() for c in explained if "GFLOPs" in c.what}
        monkeypatch.setattr(v, "build", perturbed)
        monkeypatch.setattr(v, "build_module", lambda name, channels: get_module(name)(channels // 2))
        v.clear_cache()
        after = {c.what: c.explained_by() for c in explained if "GFLOPs" not in c.what}
        after.update(at_64)
    finally:
        v.clear_cache()
    assert set(after) == set(before)
    assert all(after[k] != before[k] for k in before), (before, after)
    assert after["ECA-ResNet-50 added params"] == 80 + 16  # one extra parameter in each of the 16 ECA modules
    assert len(at_64) == 5
