"""Integer frequency grids, radial distances, exchange discs and MANI band maps (SPEC §1.2-1.3,
§2.2). Everything is in **unshifted** FFT order, so no fftshift is ever needed: index ``j`` of an
axis of length ``N`` has signed frequency ``j`` for ``j <= (N-1)//2`` and ``j - N`` above, i.e.
``0, 1, ..., -1``. For even N the Nyquist bin is ``-N/2``, exactly as the reference's
``arange(-N//2, N//2)`` labels it after fftshift. For odd N this module centres DC correctly;
the reference's grid is one bin off there (see docs/reference-differences.md).

Every map is built from integers in float64 on the host once per (H, W, params, device) and
cached; ``r <= R`` is evaluated as the reference does (float64 sqrt, inclusive).
"""

from __future__ import annotations

import functools

import torch


def signed_frequencies(n: int) -> torch.Tensor:
    """int64 ``[n]``: ``0, 1, ..., ceil(n/2)-1, -floor(n/2), ..., -1``."""
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    index = torch.arange(n, dtype=torch.int64)
    return torch.where(index <= (n - 1) // 2, index, index - n)


@functools.lru_cache(maxsize=64)
def _radius(height: int, width: int) -> torch.Tensor:
    v = signed_frequencies(height).view(-1, 1)
    u = signed_frequencies(width).view(1, -1)
    return (u * u + v * v).to(torch.float64).sqrt()


def radius(height: int, width: int) -> torch.Tensor:
    """float64 ``[H, W]`` CPU tensor: ``sqrt(u^2 + v^2)`` over signed integer frequencies."""
    return _radius(height, width).clone()


@functools.lru_cache(maxsize=256)
def disc_mask(height: int, width: int, cut: float, device: torch.device) -> torch.Tensor:
    """bool ``[H, W]`` on ``device``: ``r <= cut`` (inclusive, as the reference)."""
    return (_radius(height, width) <= float(cut)).to(device)


@functools.lru_cache(maxsize=256)
def band_map(height: int, width: int, n_bands: int, mode: str, device: torch.device) -> torch.Tensor:
    """int64 ``[H, W]`` on ``device``: the MANI band index of every frequency.

    "width": ``min(floor(r / (r_max / n)), n - 1)``; equal-width rings, r_max = max r.
    "count": rings with (nearly) equal numbers of coefficients. A coefficient's band is
    ``floor(n * (number of coefficients with a strictly smaller radius) / (H * W))``, so all
    coefficients of one radius share a band and the counts differ only by radius ties.
    """
    r = _radius(height, width)
    if mode == "width":
        r_max = float(r.max())
        if r_max == 0.0:  # 1x1 plane: only DC
            bands = torch.zeros_like(r, dtype=torch.int64)
        else:
            bands = torch.floor(r / (r_max / n_bands)).to(torch.int64).clamp_max(n_bands - 1)
    elif mode == "count":
        flat = r.flatten()
        smaller = torch.searchsorted(flat.sort().values, flat, right=False)
        bands = (smaller * n_bands // flat.numel()).clamp_max(n_bands - 1).view_as(r)
    else:
        raise ValueError(f"band_mode must be 'width' or 'count', got {mode!r}")
    return bands.to(device)


@functools.lru_cache(maxsize=256)
def band_one_hot(
    height: int,
    width: int,
    n_bands: int,
    mode: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[H*W, n]`` one-hot of the band map and float32 ``[n]`` band sizes (min 1, so an
    empty band, possible only on tiny planes, gives a mean of 0 instead of 0/0; it is never
    gathered back because no coefficient belongs to it)."""
    bands = band_map(height, width, n_bands, mode, torch.device("cpu")).flatten()
    one_hot = torch.nn.functional.one_hot(bands, n_bands).to(torch.float32)
    counts = one_hot.sum(0).clamp_min(1.0)
    return one_hot.to(device), counts.to(device)
