"""The plain-PyTorch reference: SPEC §1-§3 line by line. It is the judge of every fast path and
never imports ops, kernels or the sampler."""

from .exchange import diffusion_to_pixels, exchange, pixels_to_diffusion
from .grid import band_map, disc_mask, radius, signed_frequencies
from .mani import band_mean_magnitudes, band_weights, intensity_map, mani_noise, uniform_noise
from .sampler import call_eps_model, denoise_round, purify_diffusion, purify_round, renoise
from .schedule import (
    abar,
    alphas_cumprod_padded,
    noise_coefficients,
    round_step_coefficients,
    step_coefficients,
)

__all__ = [
    "abar",
    "alphas_cumprod_padded",
    "band_map",
    "band_mean_magnitudes",
    "band_weights",
    "call_eps_model",
    "denoise_round",
    "diffusion_to_pixels",
    "disc_mask",
    "exchange",
    "intensity_map",
    "mani_noise",
    "noise_coefficients",
    "pixels_to_diffusion",
    "purify_diffusion",
    "purify_round",
    "radius",
    "renoise",
    "round_step_coefficients",
    "signed_frequencies",
    "step_coefficients",
    "uniform_noise",
]
