"""The environment every record carries: versions, device, threads, dtype, date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, Optional

import torch

# What the cache key hashes: a change of any of these makes a stored result stale.
FINGERPRINT_KEYS = ("torch", "timm", "fvcore", "attnbench", "device_name", "dtype", "threads")


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def environment(device: str = "cpu", dtype: str = "float32", threads: Optional[int] = None) -> Dict[str, object]:
    env = {
        "attnbench": _version("attnbench"),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "fvcore": _version("fvcore"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": int(threads or torch.get_num_threads()),
        "dtype": dtype,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def fingerprint(env: Dict[str, object], threads: bool = True) -> Dict[str, object]:
    """What a cell's key hashes of its environment. ``threads=False`` for results the thread count cannot
    change (counts): their keys, and so ``--resume``, hold whichever executor or worker share ran them."""
    return {k: env.get(k) for k in FINGERPRINT_KEYS if threads or k != "threads"}
