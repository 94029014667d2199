"""The Fashion-MNIST loaders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from manipure_fast.data.bundled import SUBSET, load_bundled_subset
from manipure_fast.data.fashion_mnist import DEBIAN_LOCATION, load_fashion_mnist


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x803)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x801)
    return tmp_path


def test_loader_shapes_padding_and_counts(fake_root):
    images, labels = load_fashion_mnist("test", fake_root)
    assert images.shape == (20, 1, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [i % 10 for i in range(20)]
    assert (images[:, :, :2] == 0).all() and (images[:, :, :, -2:] == 0).all()  # 2-pixel zero border
    assert 0 <= images.min() and images.max() <= 1
    assert torch.bincount(load_fashion_mnist("train", fake_root)[1]).tolist() == [3] * 10


def test_loader_errors_name_the_problem(fake_root, tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("val", fake_root)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "nowhere")
    path = fake_root / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(raw[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", fake_root)


def test_bundled_subset_is_balanced():
    images, labels = load_bundled_subset()
    assert images.shape == (1000, 1, 32, 32)
    assert torch.bincount(labels).tolist() == [100] * 10


@pytest.mark.skipif(
    not (DEBIAN_LOCATION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_real_fashion_mnist_and_bundled_subset_agree():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 32, 32) and torch.bincount(labels).tolist() == [1000] * 10
    subset, subset_labels = load_bundled_subset()
    with np.load(SUBSET) as data:
        index = torch.from_numpy(data["test_indices"].astype(np.int64))
    assert torch.equal(images[index], subset) and torch.equal(labels[index], subset_labels)
