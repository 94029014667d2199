"""Cached DFT matrices and band masks for the fused kernels (host side, built once per
(size, cut, padding, device) from exact integer angles in float64, stored float32).

A *band* is the set of signed frequencies ``|f| <= floor(R)`` of one axis, ``R`` the larger cut
radius: the exchange changes nothing outside it (SPEC §2.2), so the fused exchange only needs
the thin ``[band, N]`` DFT rows. Once ``2 floor(R) + 1 >= N`` the band is every frequency.
Tables are zero-padded to the kernel's power-of-two tile sizes.
"""

from __future__ import annotations

import functools
import math

import torch

from ..reference.grid import signed_frequencies


def next_pow2(n: int, minimum: int = 16) -> int:
    """The tile size for ``n``: a power of two, at least 16 (``tl.dot``'s minimum on the GPU)."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


def band_frequencies(n: int, cut: float, half: bool = False) -> torch.Tensor:
    """int64 signed frequencies of the band of an axis of length ``n`` for radius ``cut``, in FFT
    order; ``half``: only the non-negative ones (a real image's spectrum at ``-f`` is the conjugate
    of its spectrum at ``f``; see ``nyquist_in_band`` for when that pairing is complete)."""
    r = int(math.floor(cut))
    freqs = (
        signed_frequencies(n) if 2 * r + 1 >= n else torch.cat([torch.arange(0, r + 1), torch.arange(-r, 0)])
    )
    freqs = freqs.to(torch.int64)
    return freqs[freqs >= 0] if half else freqs


@functools.lru_cache(maxsize=256)
def band_size(n: int, cut: float, half: bool = False) -> int:
    """``band_frequencies(n, cut, half).numel()``, cached: the launchers size tiles and shared
    memory with it on every call."""
    return band_frequencies(n, cut, half).numel()


def nyquist_in_band(n: int, cut: float) -> bool:
    """Whether the band of an axis of length ``n`` holds the frequency ``n/2``, which is its own
    mirror (``-n/2 = n/2``): only for even ``n`` once the band is every frequency. Then the
    non-negative half of the band does not describe the whole band (``band_frequencies`` lists
    ``n/2`` as ``-n/2``)."""
    return n % 2 == 0 and 2 * int(math.floor(cut)) + 1 >= n


@functools.lru_cache(maxsize=128)
def half_band_weights(n: int, cut: float, pad: int, device: torch.device) -> torch.Tensor:
    """float32 ``[pad]``: each non-negative band frequency's multiplicity in the whole band, 1 for
    frequency 0 and 2 for the others (each stands for itself and its mirror), then 0. With these,
    ``Re(sum_{f >= 0} weight_f X_f e^{i theta n})`` is the inverse over the whole band of a
    Hermitian ``X``. Requires ``not nyquist_in_band(n, cut)``."""
    freqs = band_frequencies(n, cut, half=True)
    weights = torch.zeros(pad, dtype=torch.float32)
    weights[: freqs.numel()] = torch.where(freqs == 0, 1.0, 2.0)
    return weights.to(device)


def _twiddles(freqs: torch.Tensor, n: int, rows_pad: int, cols_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``2 pi f k / n`` for f in ``freqs`` (rows) and k in 0..n-1 (columns)."""
    k = torch.arange(n, dtype=torch.int64)
    phase = torch.remainder(freqs.view(-1, 1) * k.view(1, -1), n).to(torch.float64) * (2 * math.pi / n)
    cos = torch.zeros(rows_pad, cols_pad, dtype=torch.float64)
    sin = torch.zeros(rows_pad, cols_pad, dtype=torch.float64)
    cos[: freqs.numel(), :n] = torch.cos(phase)
    sin[: freqs.numel(), :n] = torch.sin(phase)
    return cos.to(torch.float32), sin.to(torch.float32)


@functools.lru_cache(maxsize=128)
def band_tables(n: int, cut: float, rows_pad: int, cols_pad: int, device: torch.device, half: bool = False):
    """``(cos, sin)``: float32 ``[rows_pad, cols_pad]`` band DFT rows of an axis, on ``device``;
    ``half``: the rows of the non-negative frequencies only.

    Exactly conjugate-symmetric: the row of frequency -f is that of f with sin negated, bit for
    bit, and a frequency that is its own mirror (0, and n/2 for even n) has sin exactly 0. Rows
    are listed in FFT order, so row j's mirror is row (K - j) mod K. The CUDA exchange kernels'
    row transforms (``band_row_transforms``) sum only the rows up to K/2 and take the others from
    their mirrors, which gives the same bits only because of this."""
    freqs = band_frequencies(n, cut, half)
    cos, sin = _twiddles(freqs.abs(), n, rows_pad, cols_pad)
    k = freqs.numel()
    negative = torch.zeros(rows_pad, 1, dtype=torch.bool)
    negative[:k, 0] = freqs < 0
    self_mirrored = torch.zeros(rows_pad, 1, dtype=torch.bool)
    self_mirrored[:k, 0] = torch.remainder(2 * freqs, n) == 0
    sin = torch.where(negative, -sin, sin).masked_fill(self_mirrored, 0.0) + 0.0  # + 0.0: no -0.0 entries
    return cos.to(device), sin.to(device)


@functools.lru_cache(maxsize=128)
def full_tables(n: int, pad: int, device: torch.device):
    """``(cos, sin)``: float32 ``[pad, pad]`` full DFT matrix of an axis (symmetric), on ``device``."""
    cos, sin = _twiddles(signed_frequencies(n), n, pad, pad)
    return cos.to(device), sin.to(device)


@functools.lru_cache(maxsize=8)
def fft_steps(radix: int, device: torch.device) -> torch.Tensor:
    """float32 ``[radix * radix, 2]``: ``e^{-2 pi i n1 k1 / radix^2}`` at ``[k1 * radix + n1]``, the
    twiddles between the two passes of a ``radix^2``-point FFT (mani_noise_cluster.cu's 16 x 16)."""
    n1 = torch.arange(radix, dtype=torch.int64).view(1, -1)
    k1 = torch.arange(radix, dtype=torch.int64).view(-1, 1)
    phase = (n1 * k1).to(torch.float64) * (2 * math.pi / radix**2)
    steps = torch.stack([torch.cos(phase), -torch.sin(phase)], dim=-1).reshape(radix * radix, 2)
    return steps.to(torch.float32).to(device)


@functools.lru_cache(maxsize=128)
def band_masks(
    h: int,
    w: int,
    amplitude_cut: float,
    phase_cut: float,
    rows_pad: int,
    cols_pad: int,
    device: torch.device,
    half_w: bool = False,
):
    """float32 ``[rows_pad, cols_pad]`` masks ``r <= cut`` over the band grid (amplitude, phase);
    ``half_w``: over the W band's non-negative frequencies only."""
    cut = max(amplitude_cut, phase_cut)
    fh, fw = band_frequencies(h, cut), band_frequencies(w, cut, half_w)
    r = (fh.view(-1, 1) ** 2 + fw.view(1, -1) ** 2).to(torch.float64).sqrt()
    masks = []
    for c in (amplitude_cut, phase_cut):
        m = torch.zeros(rows_pad, cols_pad, dtype=torch.float32)
        m[: fh.numel(), : fw.numel()] = (r <= float(c)).to(torch.float32)
        masks.append(m.to(device))
    return tuple(masks)


@functools.lru_cache(maxsize=128)
def padded_band_map(
    h: int, w: int, n_bands: int, mode: str, rows_pad: int, cols_pad: int, device: torch.device
) -> torch.Tensor:
    """int32 ``[rows_pad, cols_pad]`` MANI band map in unshifted order, padding = ``n_bands`` (no band)."""
    from ..reference.grid import band_map

    bands = torch.full((rows_pad, cols_pad), n_bands, dtype=torch.int32)
    bands[:h, :w] = band_map(h, w, n_bands, mode, torch.device("cpu")).to(torch.int32)
    return bands.to(device)


@functools.lru_cache(maxsize=128)
def half_spectrum_bands(h: int, w: int, n_bands: int, mode: str, device: torch.device):
    """The MANI band map over ``rfft2``'s half spectrum (``H x (W//2 + 1)``, flattened), as int32
    band indices and float32 shares: a coefficient's multiplicity in the full spectrum (2 where its
    conjugate mirror lies outside the half, i.e. off column 0 and, for even W, off column W/2; else
    1) over its band's size. ``sum(share * |F|)`` over a band is then the band's mean magnitude."""
    from ..reference.grid import band_map, band_one_hot

    half = w // 2 + 1
    bands = band_map(h, w, n_bands, mode, torch.device("cpu"))[:, :half]
    _, counts = band_one_hot(h, w, n_bands, mode, torch.device("cpu"))
    columns = torch.arange(half)
    multiplicity = torch.where((columns == 0) | (2 * columns == w), 1.0, 2.0).to(torch.float64)
    share = multiplicity.view(1, -1) / counts.to(torch.float64)[bands]
    return (
        bands.to(torch.int32).flatten().to(device),
        share.to(torch.float32).flatten().to(device),
    )


@functools.lru_cache(maxsize=128)
def band_inverse_counts(
    h: int, w: int, n_bands: int, mode: str, pad: int, device: torch.device
) -> torch.Tensor:
    """float32 ``[pad]``: one over each MANI band's size (an empty band counts 1, as the reference's
    ``band_one_hot``), then 0 past ``n_bands``. ``sum(|F|) * inv_count`` is then the band mean."""
    from ..reference.grid import band_one_hot

    _, counts = band_one_hot(h, w, n_bands, mode, torch.device("cpu"))
    inverse = torch.zeros(pad, dtype=torch.float64)
    inverse[:n_bands] = 1.0 / counts.to(torch.float64)
    return inverse.to(torch.float32).to(device)
