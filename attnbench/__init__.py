"""attnbench: what attention modules cost and buy on timm backbones.

The names below are imported on first use (PEP 562): ``import attnbench`` stays instant, so the
``attnbench`` command can handle Ctrl-C and SIGTERM before torch (seconds to import) is loaded.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

try:  # one place states the version: pyproject.toml, read back from the installed metadata
    __version__ = _installed_version("attnbench")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
_EXPORTS = {
    "Attachment": ".attach.backbone",
    "attention_parameters": ".attach.backbone",
    "build": ".attach.backbone",
    "AttnBenchError": ".errors",
    "Results": ".api",
    "load": ".api",
    "run": ".api",
    "count_flops": ".measures.flops",
    "measure_activations": ".measures.memory",
    "measure_saved_memory": ".measures.memory",
    "count_params": ".measures.params",
    "get_module": ".registry",
    "list_modules": ".registry",
    "register": ".registry",
}
__all__ = [
    "Attachment",
    "AttnBenchError",
    "Results",
    "attention_parameters",
    "build",
    "count_flops",
    "count_params",
    "get_module",
    "list_modules",
    "load",
    "measure_activations",
    "measure_saved_memory",
    "register",
    "run",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
