"""The Fashion-MNIST test subset that ships inside the package (1000 images, the first 100 of
each class in test-set order), so the demo runs without the Debian package. Regenerate with
``python -m manipure_fast.data.bundled`` (needs the package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fashion_mnist import _FILES, _read_idx, find_fashion_mnist, pad_to_32

SUBSET = Path(__file__).resolve().parent / "fashion_mnist_test_subset.npz"
PER_CLASS = 100


def load_bundled_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """``([1000, 1, 32, 32] float32 in [0, 1], [1000] int64)``, ordered by test-set index."""
    with np.load(SUBSET) as data:
        return pad_to_32(torch.from_numpy(data["images"].copy())), torch.from_numpy(
            data["labels"].astype(np.int64)
        )


def build_subset(root: str | None = None) -> None:
    folder = find_fashion_mnist(root)
    image_file, label_file = _FILES["test"]
    images = _read_idx(folder / image_file, 0x00000803)
    labels = _read_idx(folder / label_file, 0x00000801)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)]))
    np.savez_compressed(SUBSET, images=images[keep], labels=labels[keep], test_indices=keep)


if __name__ == "__main__":
    build_subset()
    print(f"wrote {SUBSET} ({SUBSET.stat().st_size} bytes)")
