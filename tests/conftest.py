import contextlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from attnbench.registry import DATASETS, MODULES

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"


def install_package(src: Path, tmp_path_factory) -> Path:
    """A test package pip-installed (offline, no build isolation) into its own site folder."""
    target = tmp_path_factory.mktemp(f"{src.name}_site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        cwd=tmp_path_factory.mktemp(f"{src.name}_build"),
    )
    return target


@contextlib.contextmanager
def plugins_from(site: Path, monkeypatch):
    """Put an installed plugin site on sys.path and rediscover entry points; yields the warnings
    discovery raised. Undone afterwards."""
    monkeypatch.syspath_prepend(str(site))
    MODULES.reload()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MODULES.names()
    try:
        yield caught
    finally:
        monkeypatch.undo()
        MODULES.reload()


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The demo plugin (tests/plugin_pkg)."""
    return install_package(PLUGIN_SRC, tmp_path_factory)


@pytest.fixture(scope="session")
def hostile_site(tmp_path_factory):
    """A package whose entry points take a built-in's name, exit on import, and print on import."""
    return install_package(Path(__file__).parent / "hostile_pkg", tmp_path_factory)


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    with plugins_from(plugin_site, monkeypatch) as caught:
        yield caught


@pytest.fixture(autouse=True)
def _fresh_registry_cache():
    yield
    DATASETS.reload()
