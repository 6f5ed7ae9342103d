"""Published figures, each in its source's own convention: a match, or a difference whose cause is computed on the
model counted -- never a constant -- or a source shown, by a count, to contradict itself."""

import pytest
from torch import nn

from attnbench import validate as v
from attnbench.attach.backbone import AttentionSlot
from attnbench.registry import get_module
from attnbench.validate import CLAIMS, Claim, render_validate, summary, validate

STATUSES = ("match", "explained difference", "inconsistent source", "MISMATCH")
EXTRA = 10_000


def test_the_status_of_a_figure_follows_from_numbers():
    rows = validate(
        [
            Claim("a", "s", 4.12, 1e9, 2, lambda: 4.124e9),  # rounds to the printed digits
            Claim("b", "s", 4.13, 1e9, 2, lambda: 4.12e9, "cause", lambda: 4.1251e9),  # the cause, computed, matches
            Claim("c", "s", 4.13, 1e9, 2, lambda: 4.12e9, "cause", lambda: 4.1249e9),  # it does not: a mismatch
            Claim("d", "s", 4.13, 1e9, 2, lambda: 4.12e9, "said, not computed"),  # a cause without a number is not one
            Claim("e", "s", 1.0, 2**20, 2, lambda: 2**20 * 1.005, "", None, "x", lambda: True),
            Claim(
                "f",
                "s",
                57.41,
                2**20,
                2,
                lambda: 60_193_042,
                "twice rounded",
                lambda: round(60_193_042 / 2**20, 3) * 2**20,
            ),
        ]
    )
    assert [r["status"] for r in rows] == [
        "match",
        "explained difference",
        "MISMATCH",
        "MISMATCH",
        "match",
        "explained difference",
    ]
    assert summary(rows) == "6 published figures: 2 match, 2 explained difference, 2 MISMATCH"


def _claims(*names):
    return [c for c in CLAIMS if any(n in c.what for n in names)]


def test_published_figures():
    """Every source's ResNet-50/18 and MobileNetV2 rows and the original claims (validate.md holds all of them)."""
    assert len(CLAIMS) == 84 and len({c.what + c.source for c in CLAIMS}) == 84
    chosen = [c for c in CLAIMS if "101" not in c.what and "152" not in c.what and "34" not in c.what]
    rows = {(r["what"], r["source"]): r for r in validate(chosen)}
    statuses = {k: r["status"] for k, r in rows.items()}
    assert set(statuses.values()) <= set(STATUSES[:3])
    by_what = {what: r for (what, _), r in rows.items()}  # figure names are unique but for ResNet-50 GFLOPs
    assert by_what["SK-ResNet-50 GFLOPs"]["status"] == "match"  # the SK authors' own SK-ResNet, ptflops 2019: 4.185
    assert by_what["SK-ResNet-50 params (M)"]["ours_raw"] == 26_154_496
    assert by_what["SE-ResNet-50 GFLOPs"]["status"] == "explained difference"  # SELayer's nn.AdaptiveAvgPool2d
    assert by_what["ECA-Net50 GFLOPs (G = 2^30)"]["status"] == "match"  # thop 0.0.23, 2^30: 3.86
    assert by_what["ECA-Net50 params (M = 2^20)"]["ours_raw"] == 25_557_032 + 80  # 24.37M = 25,557,112 / 2^20
    assert by_what["ECA-MobileNetV2 MFLOPs (M = 2^20)"]["status"] == "explained difference"
    assert by_what["Triplet MobileNetV2 (k=7) GFLOPs"]["status"] == "match"  # 0.327, after the projection
    assert by_what["Triplet ResNet-18 (k=7) GFLOPs"]["status"] == "inconsistent source"
    assert all(by_what[f"SimAM {n} GFLOPs"]["status"] == "match" for n in ("ResNet-18", "ResNet-50"))
    # timm's MobileNetV2 fuses BN + ReLU6 (BatchNormAct2d), which thop does not hook; SimAM's own model does not
    assert by_what["SimAM MobileNetV2 GFLOPs"]["status"] == "explained difference"
    assert by_what["ECA-MobileNetV2 params (M = 2^20)"]["status"] == "explained difference"
    assert rows[("ResNet-50 GFLOPs", v.SENET)]["status"] == "explained difference"  # the SENet paper's Caffe v1 model
    assert rows[("ResNet-50 GFLOPs", v.PYTORCHINSIGHT)]["status"] == "match"  # ptflops 2019 on the same timm model
    assert by_what["SE block params at C=512, r=16"]["ours_raw"] == 33_312
    assert by_what["SKNet-50 params (M)"]["ours_raw"] == 27_479_784  # timm's skresnext50_32x4d, see test_placement
    eca = next(c for c in CLAIMS if c.what == "ECA-ResNet-50 added params")
    assert by_what[eca.what]["ours_raw"] == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7  # adaptive k over C = 256..2048
    assert eca.explained_by() == 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7 == 80  # official per-stage k = 3, 5, 5, 7
    text = render_validate(list(rows.values()))
    assert "| SE-ResNet-50 params (M) |" in text and "| ptflops-0.1 |" in text and "| thop-0.0.23 |" in text


class Extra(nn.Module):
    """EXTRA parameters in a leaf Linear that runs (thop >= 0.0.31 counts only the parameters of layers that ran)
    and leaves the output as it is."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, EXTRA, bias=False)

    def forward(self, x):
        return x + 0 * self.linear(x.new_zeros(1, 1)).sum()


@pytest.mark.slow
def test_no_explanation_is_a_constant(monkeypatch):
    """Change the models the explanations count (input 64 instead of 224, EXTRA parameters more per attached
    module -- enough to move a value printed to 3 decimals of 2^20 --, a narrower SE block): every explanation's
    number must change with them."""
    explained = [c for c in CLAIMS if c.explained_by is not None]
    assert len(explained) == 22
    ops = [c for c in explained if "FLOPs" in c.what]
    params = [c for c in explained if c not in ops]
    before = {c.what + c.source: c.explained_by() for c in explained}
    build = v.build

    def perturbed(*args, **kwargs):
        model = build(*args, **kwargs)
        for slot in model.modules():
            if isinstance(slot, AttentionSlot):
                slot.attn = nn.Sequential(slot.attn, Extra())  # a leaf that runs: every tool counts its parameters
        return model

    try:
        v.clear_cache()
        monkeypatch.setattr(v, "SIZE", 64)  # FLOP explanations must follow the input size of what they count
        after = {c.what + c.source: c.explained_by() for c in ops}
        monkeypatch.setattr(v, "build", perturbed)
        monkeypatch.setattr(v, "build_module", lambda name, channels: get_module(name)(channels // 2))
        v.clear_cache()
        after.update({c.what + c.source: c.explained_by() for c in params})
    finally:
        v.clear_cache()
    assert set(after) == set(before)
    assert all(after[k] != before[k] for k in before), [k for k in before if after[k] == before[k]]
    eca = next(c for c in params if c.what == "ECA-ResNet-50 added params")
    assert after[eca.what + eca.source] == 80 + 16 * EXTRA  # EXTRA parameters more in each of the 16 ECA modules


def test_inconsistency_is_computed_not_declared(monkeypatch):
    claim = next(c for c in CLAIMS if c.inconsistent is not None)
    assert claim.inconsistent() is True
    monkeypatch.setattr(v, "SIZE", 64)  # at 64x64 the k-dependent convolutions are as small as the printed gap
    v.clear_cache()
    try:
        assert claim.inconsistent() is False
    finally:
        v.clear_cache()


def test_explanations_equal_the_real_tool_on_the_official_models():
    """Each explanation is what the paper's tool prints for the authors' own model. These totals are the real tools
    run on the official code (thop 0.0.23.post1907171430 on github.com/BangguWu/ECANet models/ at a46e411+,
    thop 0.0.31.post2005241907 on github.com/ZjjConan/SimAM networks/imagenet/, 1x3x224x224), not on ours:
    ECA-Net18/34 (torchvision blocks sharing one ReLU, ECA pooling with a module), ECA-MobileNetV2 (k = 1 below
    96 channels, plain BN + ReLU6, x.mean head), SimAM-MobileNetV2 (plain BN + ReLU6, a functional head pool)."""
    claims = {(c.what, c.source): c for c in CLAIMS}
    eca = next(s for w, s in claims if w.startswith("ECA-Net18"))
    official = {
        ("ECA-Net18 GFLOPs (G = 2^30)", eca): 1_826_867_200,
        ("ECA-Net34 GFLOPs (G = 2^30)", eca.replace("18_k3577", "34_k3357")): 3_682_837_248,
        ("ECA-Net101 GFLOPs (G = 2^30)", eca.replace("18_k3577", "101_k3357")): 7_887_349_760,
        ("ECA-MobileNetV2 params (M = 2^20)", f"{v.ECANET} (eca_mobilenetv2_k13)"): 3_504_903,
        ("ECA-MobileNetV2 MFLOPs (M = 2^20)", f"{v.ECANET} (eca_mobilenetv2_k13)"): 335_449_024,
        ("SimAM MobileNetV2 params (M)", v.SIMAM): 3_504_872,
        ("SimAM MobileNetV2 GFLOPs", v.SIMAM): 314_130_496,
    }
    assert {k: claims[k].explained_by() for k in official} == official
