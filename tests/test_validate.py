"""Published figures: every claim is a match or a difference whose explanation is checked."""
from attnbench.validate import CLAIMS, render_validate, validate


def test_published_figures():
    rows = {r["what"]: r for r in validate()}
    assert len(rows) == len(CLAIMS) == 17
    assert not [r for r in rows.values() if r["status"] == "MISMATCH"]
    for what in ("SE-ResNet-50 params (M)", "SE-ResNet-101 params (M)", "CBAM-ResNet-50 params (M)", "SimAM params",
                 "CoordAtt MobileNetV2 params (M)",
                 "SE-ResNet-50 added GFLOPs"):
        assert rows[what]["status"] == "match", what
    assert rows["ResNet-50 GFLOPs"]["status"] == "explained difference"
    assert rows["SE block params at C=512, r=16"]["ours_raw"] == 33_312
    assert "| SE-ResNet-50 params (M) |" in render_validate(list(rows.values()))
