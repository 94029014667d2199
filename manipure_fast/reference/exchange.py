"""The FreqPure frequency exchange (SPEC §2.2 steps 2-6), plain PyTorch, vectorised over
``[B, C, H, W]`` and differentiable.

Amplitude inside ``r <= amplitude_cut_range`` and phase inside ``r <= phase_cut_range`` come
from the reference estimate; everything else from x0. Both images are moved to the [0, 255]
scale first, exactly as the reference purifier does, and the result comes back in [-1, 1].

Example::

    x0_exchanged = exchange(x_ref0, x0)                       # parity defaults (10, 10)
    x0_exchanged = exchange(x_ref0, x0, phase_mode="project", delta=0.3)
"""

from __future__ import annotations

import math

import torch

from .grid import disc_mask


def diffusion_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 255]: ``clip(clamp(x/2 + 0.5, 0, 1) * 255, 0, 255)``."""
    return torch.clip(torch.clamp(x / 2 + 0.5, 0, 1) * 255, 0, 255)


def pixels_to_diffusion(v: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> [-1, 1]: ``clamp((clip(v, 0, 255) / 255 - 0.5) * 2, -1, 1)``."""
    return torch.clamp((torch.clip(v, 0, 255) / 255 - 0.5) * 2, -1, 1)


def exchange(
    x_ref0: torch.Tensor,
    x0: torch.Tensor,
    *,
    amplitude_cut_range: float = 10,
    phase_cut_range: float = 10,
    phase_mode: str = "replace",
    delta: float = 0.3,
    reconstruct: str = "abs",
) -> torch.Tensor:
    """Exchange low-frequency amplitude and phase of ``x0`` with those of ``x_ref0``.

    x_ref0, x0: ``[B, C, H, W]`` in the diffusion range. Returns ``[B, C, H, W]`` in [-1, 1].

    phase_mode "replace": phase inside the phase disc is the reference's (the reference
    purifier's behaviour; its later clip to ``ref +- delta`` is a no-op). "project": x0's phase,
    clipped to within ``delta`` of the reference's, the difference taken modulo 2*pi (Eq. 13).
    reconstruct "abs": ``|ifft2|`` as the reference; "real": its real part.
    """
    if x_ref0.shape != x0.shape:
        raise ValueError(
            f"x_ref0 and x0 must have the same shape, got {tuple(x_ref0.shape)} and {tuple(x0.shape)}"
        )
    h, w = x0.shape[-2:]
    amplitude_disc = disc_mask(h, w, amplitude_cut_range, x0.device)
    phase_disc = disc_mask(h, w, phase_cut_range, x0.device)

    spectrum_ref = torch.fft.fft2(diffusion_to_pixels(x_ref0))
    spectrum_x0 = torch.fft.fft2(diffusion_to_pixels(x0))
    amplitude = torch.where(amplitude_disc, spectrum_ref.abs(), spectrum_x0.abs())
    phase_ref, phase_x0 = spectrum_ref.angle(), spectrum_x0.angle()
    if phase_mode == "replace":
        inside = phase_ref
    elif phase_mode == "project":
        difference = torch.remainder(phase_x0 - phase_ref + math.pi, 2 * math.pi) - math.pi
        inside = phase_ref + difference.clamp(-delta, delta)
    else:
        raise ValueError(f"phase_mode must be 'replace' or 'project', got {phase_mode!r}")
    phase = torch.where(phase_disc, inside, phase_x0)

    image = torch.fft.ifft2(torch.polar(amplitude, phase))
    if reconstruct == "abs":
        pixels = image.abs()
    elif reconstruct == "real":
        pixels = image.real
    else:
        raise ValueError(f"reconstruct must be 'abs' or 'real', got {reconstruct!r}")
    return pixels_to_diffusion(pixels)


def exchange_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    ref_t: torch.Tensor,
    eps_ref: torch.Tensor | None,
    noise: torch.Tensor,
    *,
    sqrt_abar: float,
    sqrt_one_minus_abar: float,
    ref_sqrt_abar: float,
    ref_sqrt_one_minus_abar: float,
    sqrt_abar_next: float,
    c1: float,
    c2: float,
    amplitude_cut_range: float = 10,
    phase_cut_range: float = 10,
    phase_mode: str = "replace",
    delta: float = 0.3,
    reconstruct: str = "abs",
) -> torch.Tensor:
    """One whole reverse step after the model call (SPEC §2.1 steps 1-3), the composition the fused
    ``exchange_update`` op computes in one pass:

    ``x0 = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t)``;
    ``x_ref0 = (ref_t - sqrt(1-abar_f) eps_ref) / sqrt(abar_f)``, or ``ref_t`` itself when
    ``eps_ref`` is None (``reference="input"``);
    ``x_next = sqrt(abar_next) * exchange(x_ref0, x0) + c1 * noise + c2 * eps``.

    All tensors ``[B, C, H, W]``; returns ``x_next``.
    """
    x0 = (x_t - eps * sqrt_one_minus_abar) / sqrt_abar
    x_ref0 = ref_t if eps_ref is None else (ref_t - eps_ref * ref_sqrt_one_minus_abar) / ref_sqrt_abar
    x0 = exchange(
        x_ref0,
        x0,
        amplitude_cut_range=amplitude_cut_range,
        phase_cut_range=phase_cut_range,
        phase_mode=phase_mode,
        delta=delta,
        reconstruct=reconstruct,
    )
    return sqrt_abar_next * x0 + c1 * noise + c2 * eps
