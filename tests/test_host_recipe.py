"""`amp: auto` / `channels_last: auto`: the training recipe is chosen on the host from a measurement, resolved before
cells get their keys, shared by every module of a backbone, and recorded with its reason."""

import pytest

from attnbench.suite.parse import parse_suite
from attnbench.suite.plan import plan
from attnbench.train.loop import validate_training
from attnbench.train.recipe import MARGIN, candidates, choose, resolve_cells

DIGITS = {"name": "digits", "train_subset": 64, "test_subset": 40}
TRAINING = {
    "epochs": 1,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.05,
    "threads": 1,
    "amp": "auto",
    "channels_last": "auto",
    "stem": {"kernel_size": 3, "stride": 1, "maxpool": False},
}


def test_auto_expands_plainest_first_and_fixed_values_stay():
    assert candidates({"amp": "auto", "channels_last": "auto"}) == [
        (None, False),
        (None, True),
        ("bf16", False),
        ("bf16", True),
    ]
    assert candidates({"amp": "auto", "channels_last": True}) == [(None, True), ("bf16", True)]
    assert candidates({"amp": "bf16", "channels_last": "auto"}) == [("bf16", False), ("bf16", True)]


def test_the_plainest_setting_within_the_margin_of_the_fastest_wins():
    cands = candidates({"amp": "auto", "channels_last": "auto"})
    fp32, fp32_cl, bf16, bf16_cl = cands
    # A CPU with native bf16 (development VM: bf16 + channels_last 1.32x fp32): bf16 + channels_last.
    assert choose(cands, {fp32: 1.32, fp32_cl: 1.31, bf16: 1.15, bf16_cl: 1.00}) == bf16_cl
    assert choose(cands, {fp32: 1.32, fp32_cl: 1.31, bf16: 1.08, bf16_cl: 1.00}) == bf16  # within 10%: plainer
    # A CPU without it (bf16 through conversion kernels): fp32.
    assert choose(cands, {fp32: 1.00, fp32_cl: 1.01, bf16: 1.90, bf16_cl: 1.70}) == fp32
    # Within the margin of the fastest, the plainer one: a speed-up is the only reason to leave fp32.
    assert choose(cands, {fp32: 1.00 + MARGIN * 0.9, fp32_cl: 2, bf16: 2, bf16_cl: 1.00}) == fp32
    assert choose(cands, {fp32: 1.00 + MARGIN * 1.1, fp32_cl: 2, bf16: 2, bf16_cl: 1.00}) == bf16_cl


def test_auto_is_a_valid_setting_and_other_words_are_not():
    assert validate_training({"amp": "auto", "channels_last": "auto"}) == []
    assert [f for f, _ in validate_training({"amp": "fast", "channels_last": "maybe"})] == ["channels_last", "amp"]


def _suite():
    return parse_suite(
        {
            "name": "acc",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none", "se", {"name": "none-2ep", "module": "none", "training": {"epochs": 2}}],
            "dataset": DIGITS,
            "training": TRAINING,
            "seeds": [0, 1],
        },
        "acc.yaml",
    )


def test_one_probe_per_backbone_and_recipe_shared_by_every_module_seed_and_budget():
    calls = []

    def probe(backbone, dataset, training):
        calls.append((backbone, training["epochs"]))
        return {"amp": "bf16", "channels_last": True, "why": "bf16 + channels_last chosen by auto (test)"}

    cells = plan(_suite())
    resolved = resolve_cells(cells, probe)
    assert len(calls) == 1 and len(resolved) == len(cells) == 6  # epochs do not change a step's cost: one probe
    assert {(c.training["amp"], c.training["channels_last"]) for c in resolved} == {("bf16", True)}
    assert all(c.recipe_choice["why"].startswith("bf16 + channels_last") for c in resolved)
    # The key holds what runs: a host that chooses fp32 plans other cells than one that chooses bf16.
    from attnbench.harness.tasks import cell_keys

    fp32 = resolve_cells(cells, lambda *a: {"amp": None, "channels_last": False, "why": "fp32"})
    assert not set(cell_keys(resolved)) & set(cell_keys(fp32))
    assert cell_keys(resolve_cells(cells, probe)) == cell_keys(resolved)  # the same choice: the same keys (resume)


@pytest.mark.slow
def test_an_auto_run_records_what_it_chose_and_why(tmp_path):
    from attnbench.harness.runner import run_suite
    from attnbench.report.accuracy import budget_line

    notices = []
    suite = parse_suite(
        {
            "name": "acc",
            "kind": "accuracy",
            "backbones": ["resnet18"],
            "modules": ["none"],
            "dataset": DIGITS,
            "training": TRAINING,
            "seeds": [0],
        },
        "acc.yaml",
    )
    result = run_suite(suite, tmp_path, on_notice=notices.append)
    (r,) = result.records
    assert r.ok, r.error
    choice = r.stats["recipe_choice"]
    assert set(choice["step_ms"]) == {"fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"}
    assert (r.config["training"]["amp"], r.config["training"]["channels_last"]) == (
        choice["amp"],
        choice["channels_last"],
    )
    assert r.stats["recipe"]["amp"] == choice["amp"]  # what trained is what the key says
    assert choice["asked"] == {"amp": "auto", "channels_last": "auto"} and isinstance(choice["native_bf16"], bool)
    assert any(n.startswith("training recipe: ") and "chosen by auto" in n for n in notices)
    assert f"Precision and memory format: {choice['why']}." in budget_line(result.records)
