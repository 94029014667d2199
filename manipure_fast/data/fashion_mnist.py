"""Fashion-MNIST from the gzipped IDX files of Debian's ``dataset-fashion-mnist`` package.

Images come back as float32 ``[N, 1, 32, 32]`` in [0, 1]: the 28x28 originals are padded with
two rows/columns of zeros on every side (the background is black), because the diffusion UNet
downsamples three times and wants a side divisible by 8. Labels are int64 ``[N]`` in 0..9.

Example::

    images, labels = load_fashion_mnist("test")
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEBIAN_LOCATION = Path("/usr/share/datasets/fashion-mnist")
ENV_VARIABLE = "MANIPURE_FASHION_MNIST"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
PAD = 2  # 28 + 2 * 2 = 32


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path} is not an IDX file of the expected kind (magic {magic:#x}, expected {expected_magic:#x})"
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes of data for shape {dims}")
    return data.reshape(dims)


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files: ``root``, else ``$MANIPURE_FASHION_MNIST``, else
    Debian's location. Raises FileNotFoundError with the install hint if none has them."""
    candidates = [Path(root)] if root is not None else []
    if root is None and os.environ.get(ENV_VARIABLE):
        candidates.append(Path(os.environ[ENV_VARIABLE]))
    if root is None:
        candidates.append(DEBIAN_LOCATION)
    for folder in candidates:
        if all((folder / name).is_file() for pair in _FILES.values() for name in pair):
            return folder
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found (looked in: {searched}). Install them with "
        f"`apt-get install dataset-fashion-mnist`, or pass the folder that holds them."
    )


def load_fashion_mnist(
    split: str = "test",
    root: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split ("train": 60k images, "test": 10k) as ``([N,1,32,32] float32, [N] int64)``."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    image_file, label_file = _FILES[split]
    images = _read_idx(folder / image_file, 0x00000803)
    labels = _read_idx(folder / label_file, 0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {folder}")
    return pad_to_32(torch.from_numpy(images.copy())), torch.from_numpy(labels.astype(np.int64))


def pad_to_32(images_uint8: torch.Tensor) -> torch.Tensor:
    """``[N, 28, 28]`` uint8 -> ``[N, 1, 32, 32]`` float32 in [0, 1], zero-padded."""
    images = images_uint8.to(torch.float32).div_(255.0).unsqueeze(1)
    return torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
