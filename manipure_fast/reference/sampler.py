"""The reference purification loop (SPEC §2.1-2.3), line by line: rounds of re-noising (MANI
or uniform) followed by reverse DDPM/DDIM steps whose x0 prediction is frequency-exchanged
with a reference estimate.

Every step is vectorised over the batch: no per-image loop, no host sync (all coefficients are
Python floats computed from the schedule once per round), no numpy.

Example::

    x_diff = purify_diffusion(eps_model, x_diff, PurifierConfig(), GlobalNoise())
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import PurifierConfig, Round
from ..noise import NoiseSource
from .exchange import exchange
from .mani import mani_noise, uniform_noise
from .schedule import noise_coefficients, round_step_coefficients

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _parameter_dtype(model: object) -> torch.dtype | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def call_eps_model(eps_model: EpsModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``eps_model(x, t)`` keeping the first C output channels (learned-sigma models return 2C),
    in x's dtype. x: ``[N, C, H, W]``; t: float ``[N]`` holding integer timesteps. A module whose
    weights have another floating dtype (a bf16 model, an fp32 model under fp64 inputs) is fed
    its own dtype; the sampler's arithmetic stays in x's dtype."""
    model_dtype = _parameter_dtype(eps_model)
    out = eps_model(x if model_dtype in (None, x.dtype) else x.to(model_dtype), t)
    channels = x.shape[1]
    if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
        raise ValueError(f"eps_model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    if out.shape[1] not in (channels, 2 * channels):
        raise ValueError(
            f"eps_model returned {out.shape[1]} channels for a {channels}-channel "
            f"input; expected {channels} or {2 * channels} (learned sigma)"
        )
    return out[:, :channels].to(x.dtype)


def renoise(x: torch.Tensor, t: int, noise: torch.Tensor, config: PurifierConfig) -> torch.Tensor:
    """The start of a round: MANI when ``config.mani``, else uniform forward diffusion."""
    if not config.mani:
        return uniform_noise(x, t, noise)
    return mani_noise(
        x,
        t,
        noise,
        n_bands=config.n_bands,
        gamma=config.gamma,
        eps0=config.eps0,
        band_mode=config.band_mode,
        weight_map=config.weight_map,
        normalize=config.normalize,
        detach_map=config.mani_detach,
    )


def timestep_tensor(value: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), float(value), device=like.device, dtype=torch.float32)


def _predict_x0(x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    coef = noise_coefficients(t)
    return (x_t - eps * coef.noise) / coef.signal


def denoise_round(
    eps_model: EpsModel,
    x_in: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: tuple[int, ...],
    config: PurifierConfig,
    noise: NoiseSource,
) -> torch.Tensor:
    """Reverse steps of one round (the reference's ``denoising_process``). x_in: the round's
    input (for the reference estimate); x_t: the re-noised image. Returns the exchanged x0 of the
    last step, ``[B, C, H, W]`` in [-1, 1]."""
    batch = x_t.shape[0]
    t_f = config.forward_noise_steps
    ref_coef = noise_coefficients(t_f)
    for coef in round_step_coefficients(tuple(timesteps), config.eta):
        if config.exchange and config.reference == "renoised":
            ref_t = x_in * ref_coef.signal + noise.draw("reference_renoise", x_in) * ref_coef.noise
            if config.batch_model_calls:
                both = call_eps_model(
                    eps_model,
                    torch.cat([x_t, ref_t]),
                    torch.cat([timestep_tensor(coef.t, batch, x_t), timestep_tensor(t_f, batch, x_t)]),
                )
                eps, eps_ref = both[:batch], both[batch:]
            else:
                eps = call_eps_model(eps_model, x_t, timestep_tensor(coef.t, batch, x_t))
                eps_ref = call_eps_model(eps_model, ref_t, timestep_tensor(t_f, batch, x_t))
            x_ref0 = _predict_x0(ref_t, eps_ref, t_f)
        else:
            eps = call_eps_model(eps_model, x_t, timestep_tensor(coef.t, batch, x_t))
            x_ref0 = x_in
        x0 = (x_t - eps * coef.sqrt_one_minus_abar) / coef.sqrt_abar
        if config.exchange:
            x0 = exchange(
                x_ref0,
                x0,
                amplitude_cut_range=config.amplitude_cut_range,
                phase_cut_range=config.phase_cut_range,
                phase_mode=config.phase_mode,
                delta=config.delta,
                reconstruct=config.reconstruct,
            )
        z = noise.draw("ddpm_update_noise", x_t)
        x_t = coef.sqrt_abar_next * x0 + coef.c1 * z + coef.c2 * eps
    return x_t


def purify_round(
    eps_model: EpsModel, x_diff: torch.Tensor, round_: Round, config: PurifierConfig, noise: NoiseSource
) -> torch.Tensor:
    """One round: re-noise ``x_diff`` to ``round_.renoise_t``, then reverse steps."""
    x_t = renoise(x_diff, round_.renoise_t, noise.draw("round_renoise", x_diff), config)
    return denoise_round(eps_model, x_diff, x_t, round_.timesteps, config, noise)


def purify_diffusion(
    eps_model: EpsModel, x_diff: torch.Tensor, config: PurifierConfig, noise: NoiseSource
) -> torch.Tensor:
    """All rounds. x_diff: ``[B, C, H, W]`` in [-1, 1] -> purified, same shape, in [-1, 1]."""
    for round_ in config.rounds:
        x_diff = purify_round(eps_model, x_diff, round_, config, noise)
    return x_diff
