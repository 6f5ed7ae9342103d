import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from attnbench.registry import DATASETS, MODULES

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The demo plugin, pip-installed (offline, no build isolation) into its own site folder."""
    target = tmp_path_factory.mktemp("plugin_site")
    build = tmp_path_factory.mktemp("plugin_build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(PLUGIN_SRC)],
        check=True, cwd=build,
    )
    return target


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    """Put the installed plugin on sys.path and rediscover entry points; undone afterwards."""
    monkeypatch.syspath_prepend(str(plugin_site))
    MODULES.reload()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MODULES.names()
    yield caught
    monkeypatch.undo()
    MODULES.reload()


@pytest.fixture(autouse=True)
def _fresh_registry_cache():
    yield
    DATASETS.reload()
