"""MANI: magnitude-adaptive noise injection (SPEC §1), plain PyTorch, vectorised over
``[B, C, H, W]`` and differentiable end to end (the intensity map depends on the image).

Example::

    z = torch.randn_like(x)
    x_t = mani_noise(x, t=999, noise=z)            # defaults: 8 bands, gamma 1.8, rms
    W = intensity_map(x)                           # the map alone, [B, C, H, W]
"""

from __future__ import annotations

import torch

from .grid import band_map, band_one_hot
from .schedule import noise_coefficients


def band_mean_magnitudes(
    x: torch.Tensor,
    *,
    n_bands: int = 8,
    band_mode: str = "width",
) -> torch.Tensor:
    """``M_i``, the mean of ``|fft2(x)|`` over band ``i`` (paper Eq. 8). ``x: [B, C, H, W]`` ->
    ``[B, C, n_bands]``."""
    spectrum = torch.fft.fft2(x)
    return _band_means(spectrum.abs(), n_bands, band_mode)


def _band_means(magnitude: torch.Tensor, n_bands: int, band_mode: str) -> torch.Tensor:
    b, c, h, w = magnitude.shape
    one_hot, counts = band_one_hot(h, w, n_bands, band_mode, magnitude.device)
    sums = magnitude.reshape(b, c, h * w) @ one_hot.to(magnitude.dtype)
    return sums / counts.to(magnitude.dtype)


def band_weights(
    band_means: torch.Tensor,
    *,
    gamma: float = 1.8,
    eps0: float = 1e-6,
) -> torch.Tensor:
    """``w_i = 1 / (M_i^gamma + eps0)`` (paper Eq. 9). Same shape as ``band_means``."""
    return 1.0 / (band_means.pow(gamma) + eps0)


def intensity_map(
    x: torch.Tensor,
    *,
    n_bands: int = 8,
    gamma: float = 1.8,
    eps0: float = 1e-6,
    band_mode: str = "width",
    weight_map: str = "spectral",
    normalize: str = "rms",
) -> torch.Tensor:
    """The spatial intensity map W (SPEC §1.6-1.7). ``x: [B, C, H, W]`` (diffusion range) ->
    ``W: [B, C, H, W]``, non-negative.

    "spectral": ``|ifft2(w[band] * F)|``; "kernel": ``|ifft2(w[band])|``. Normalised per
    (image, channel): "rms" to unit RMS, "max" to unit maximum, "none" as is. A plane whose map
    is identically zero (only an all-zero "spectral" input, a mid-grey plane) has no shape to
    follow; it gets W = 1 there, i.e. uniform noise, instead of 0/0.
    """
    b, c, h, w = x.shape
    spectrum = torch.fft.fft2(x)
    weights = band_weights(_band_means(spectrum.abs(), n_bands, band_mode), gamma=gamma, eps0=eps0)
    per_frequency = weights[..., band_map(h, w, n_bands, band_mode, x.device)]  # [B, C, H, W]
    if weight_map == "spectral":
        shaped = torch.fft.ifft2(per_frequency * spectrum).abs()
    elif weight_map == "kernel":
        shaped = torch.fft.ifft2(per_frequency.to(spectrum.dtype)).abs()
    else:
        raise ValueError(f"weight_map must be 'spectral' or 'kernel', got {weight_map!r}")
    if normalize == "none":
        return shaped
    if normalize == "rms":
        mean_square = shaped.square().mean(dim=(-2, -1), keepdim=True)
        nonzero = mean_square > 0
        # sqrt of a safe value: sqrt'(0) is infinite, and 0 * inf would make the gradient of a
        # constant plane NaN even though its map W = 1 does not depend on x.
        scale = torch.where(nonzero, mean_square, torch.ones_like(mean_square)).sqrt()
    elif normalize == "max":
        scale = shaped.amax(dim=(-2, -1), keepdim=True)
        nonzero = scale > 0
    else:
        raise ValueError(f"normalize must be 'rms', 'max' or 'none', got {normalize!r}")
    # Divide by a safe denominator so the unselected branch never produces inf (and a NaN grad).
    normalised = shaped / torch.where(nonzero, scale, torch.ones_like(scale))
    return torch.where(nonzero, normalised, torch.ones_like(shaped))


def mani_noise(
    x: torch.Tensor,
    t: int,
    noise: torch.Tensor,
    *,
    n_bands: int = 8,
    gamma: float = 1.8,
    eps0: float = 1e-6,
    band_mode: str = "width",
    weight_map: str = "spectral",
    normalize: str = "rms",
    detach_map: bool = False,
) -> torch.Tensor:
    """Magnitude-adaptive re-noising (paper Eq. 10-11):
    ``x_t = sqrt(abar_t) * x + sqrt(1 - abar_t) * (W * z)``.

    x: ``[B, C, H, W]`` diffusion range; t: timestep in [0, 999]; noise: z, same shape as x.
    ``detach_map=True`` stops the gradient through W (explicit; the default keeps it).
    """
    weight = intensity_map(
        x,
        n_bands=n_bands,
        gamma=gamma,
        eps0=eps0,
        band_mode=band_mode,
        weight_map=weight_map,
        normalize=normalize,
    )
    if detach_map:
        weight = weight.detach()
    coef = noise_coefficients(t)
    return x * coef.signal + (weight * noise) * coef.noise


def uniform_noise(x: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """Plain forward diffusion ``sqrt(abar_t) * x + sqrt(1 - abar_t) * z``, in the reference's
    order of operations (``x * a.sqrt() + e * (1 - a).sqrt()``)."""
    coef = noise_coefficients(t)
    return x * coef.signal + noise * coef.noise
