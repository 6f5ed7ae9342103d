"""attnbench/registry.py: where names come from, in-process registration, unknown names.
(Plugin collisions and broken plugins: tests/test_robustness.py.)"""

import re
from importlib.metadata import distribution, version

import pytest
import torch
from formulas import first_party_modules

import attnbench
from attnbench.errors import AttnBenchError, UnknownNameError
from attnbench.registry import DATASETS, MODULES, Registry
from attnbench.train import data


def test_builtins_are_attnbench_entry_points():
    eps = {ep.name: ep for ep in distribution("attnbench").entry_points if ep.group == "attnbench.modules"}
    assert set(first_party_modules()) < set(eps) <= set(attnbench.list_modules())
    assert {n for n in eps if n.startswith("timm:")} == set(eps) - set(first_party_modules())
    for name, ep in eps.items():  # the registry hands out exactly the object the entry point names
        assert MODULES.provider(name) == ("attnbench", version("attnbench")), name
        assert attnbench.get_module(name) is ep.load(), name


def test_datasets_registry_lists_the_four_builtins():
    own = {n for n in DATASETS.names() if DATASETS.provider(n)[0] == "attnbench"}
    assert own == {"fashion_mnist", "digits", "cifar10", "cifar100"}
    assert DATASETS.get("digits") is data.digits and DATASETS.get("cifar100") is data.cifar100


def test_register_refuses_a_taken_name_without_override():
    builtin = attnbench.get_module("se")

    def gate(channels):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="module 'se' is already registered; pass override=True"):
        attnbench.register("se")(gate)
    assert attnbench.get_module("se") is builtin
    try:
        attnbench.register("se", override=True)(gate)
        assert attnbench.get_module("se") is gate and MODULES.provider("se") == ("<in-process>", "")
    finally:
        MODULES.unregister("se")
    assert attnbench.get_module("se") is builtin and MODULES.provider("se")[0] == "attnbench"


def test_register_then_unregister_a_new_name():
    def gate(channels):
        return torch.nn.Identity()

    assert attnbench.register("test_registry_gate")(gate) is gate  # usable as a decorator
    try:
        assert attnbench.register("test_registry_gate")(gate) is gate  # the same factory again is not a clash
        MODULES.reload()  # rediscovering entry points keeps in-process registrations
        assert "test_registry_gate" in attnbench.list_modules() and attnbench.get_module("test_registry_gate") is gate
    finally:
        MODULES.unregister("test_registry_gate")
    assert "test_registry_gate" not in attnbench.list_modules()
    with pytest.raises(UnknownNameError):
        attnbench.get_module("test_registry_gate")
    MODULES.unregister("test_registry_gate")  # unregistering what is not there is a no-op


def test_unknown_name_is_one_line_with_close_names():
    with pytest.raises(UnknownNameError) as exc:
        MODULES.get("cbma")
    # difflib's closest first: 'cbam', then up to two more
    assert re.fullmatch(
        r"unknown module 'cbma'; did you mean 'cbam'(, '[^']+'){0,2}\? \(see `attnbench list modules`\)", str(exc.value)
    ), str(exc.value)
    assert isinstance(exc.value, AttnBenchError) and isinstance(exc.value, KeyError)
    with pytest.raises(UnknownNameError, match=r"^unknown dataset 'zzz' \(see `attnbench list datasets`\)$"):
        DATASETS.get("zzz")  # nothing close: no guess


def test_an_empty_group_has_no_names():
    widgets = Registry("attnbench.test-no-such-group", "widget")
    assert widgets.names() == [] and widgets.plugin_packages() == {}
    with pytest.raises(UnknownNameError, match=r"unknown widget 'x' \(see `attnbench list widgets`\)"):
        widgets.get("x")
