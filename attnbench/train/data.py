"""Datasets as in-memory tensors, offline: files a package ships or a local path.

Registered through the ``attnbench.datasets`` entry-point group (built-ins too). A loader is
``load(root=None, download=False) -> Splits``; a missing dataset raises one line saying how to
install it. Nothing is downloaded unless the user passes ``download=True`` (``--download``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import UsageError

DATA_ROOT_ENV = "ATTNBENCH_DATA_ROOT"
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"


@dataclass
class Splits:
    """uint8 or float images (N, C, H, W), int64 labels; statistics for normalisation."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def image_size(self) -> tuple:
        return tuple(self.train_x.shape[2:])


def _root(root: Optional[str], default: str) -> Path:
    return Path(root or os.environ.get(DATA_ROOT_ENV) or default)


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte idx file; point the data root at the original files")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_pair(root: Path, stem: str) -> tuple:
    for suffix in (".gz", ""):
        images, labels = root / f"{stem}-images-idx3-ubyte{suffix}", root / f"{stem}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            x, y = read_idx(images), read_idx(labels)
            return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))
    raise FileNotFoundError(root / f"{stem}-images-idx3-ubyte.gz")


def fashion_mnist(root: Optional[str] = None, download: bool = False) -> Splits:
    """Fashion-MNIST, 60,000/10,000 28x28 grey images, 10 classes (Debian: dataset-fashion-mnist)."""
    path = _root(root, FASHION_MNIST_DEBIAN)
    try:
        tx, ty = _idx_pair(path, "train")
        vx, vy = _idx_pair(path, "t10k")
    except FileNotFoundError:
        raise UsageError(
            f"Fashion-MNIST not found in {path}; install it with `apt-get install dataset-fashion-mnist` "
            f"or pass --data-root (or set {DATA_ROOT_ENV}) to a folder with the train-/t10k- idx files"
        )
    return Splits("fashion_mnist", tx, ty, vx, vy, 10)


def digits(root: Optional[str] = None, download: bool = False) -> Splits:
    """scikit-learn's 1,797 8x8 digits (shipped in the wheel), fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # 0..16 -> 0..255
    tx, vx, ty, vy = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Splits("digits", as_t(tx), as_t(ty).long(), as_t(vx), as_t(vy).long(), 10)


def _cifar(cls_name: str, num_classes: int, root: Optional[str], download: bool) -> Splits:
    import torchvision

    path = _root(root, "data")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = cls(str(path), train=True, download=download), cls(str(path), train=False, download=download)
    except RuntimeError as exc:
        raise UsageError(
            f"{cls_name} not found in {path} ({str(exc).splitlines()[0]}); pass --data-root to the "
            "folder holding it, or --download to fetch it once (needs internet)"
        )
    conv = lambda ds: (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))  # noqa: E731
    (tx, ty), (vx, vy) = conv(train), conv(test)
    return Splits(cls_name.lower(), tx, ty, vx, vy, num_classes)


def cifar10(root: Optional[str] = None, download: bool = False) -> Splits:
    """CIFAR-10 through torchvision from a local root (never downloaded unless asked)."""
    return _cifar("CIFAR10", 10, root, download)


def cifar100(root: Optional[str] = None, download: bool = False) -> Splits:
    return _cifar("CIFAR100", 100, root, download)


# (training images, test images, classes) of the built-in datasets, known without loading them.
KNOWN_SIZES = {
    "digits": (1347, 450, 10),
    "fashion_mnist": (60000, 10000, 10),
    "cifar10": (50000, 10000, 10),
    "cifar100": (50000, 10000, 100),
}


def train_size(dataset: Dict[str, Any]) -> Optional[int]:
    """Training images a dataset section yields (the class-balanced subset keeps n // classes per
    class), or None for a plugin dataset: lets a suite be checked before anything is loaded."""
    known = KNOWN_SIZES.get(dataset.get("name"))
    if known is None:
        return None
    full, _, classes = known
    n = dataset.get("train_subset")
    return full if not n or n >= full else (n // classes) * classes


def load_dataset(name: str, root: Optional[str] = None, download: bool = False) -> Splits:
    from ..registry import DATASETS

    return DATASETS.get(name)(root=root, download=download)
