"""The production sampler: the purification loop of SPEC §2.3 on the ops floor, so each step's
spectral work runs as one fused op on the selected backend (``backend="auto" | "reference" |
"triton"``). Noise comes from a NoiseSource in the reference's order, so given the same source
this sampler equals ``reference.purify_diffusion`` (tested on every backend).

Per step: one model call on 2B images (main + reference estimate), then ``ops.exchange_update``.
Per round: one ``ops.mani_noise`` (or the uniform re-noise).
"""

from __future__ import annotations

import torch

from . import ops
from .config import PurifierConfig
from .noise import NoiseSource
from .reference.mani import uniform_noise
from .reference.sampler import EpsModel, call_eps_model, timestep_tensor
from .reference.schedule import noise_coefficients, round_step_coefficients


def _renoise(x: torch.Tensor, t: int, z: torch.Tensor, config: PurifierConfig, backend: str | None):
    if not config.mani:
        return uniform_noise(x, t, z)
    return ops.mani_noise(
        x,
        t,
        z,
        n_bands=config.n_bands,
        gamma=config.gamma,
        eps0=config.eps0,
        band_mode=config.band_mode,
        weight_map=config.weight_map,
        normalize=config.normalize,
        detach_map=config.mani_detach,
        backend=backend,
    )


def _model_calls(eps_model, x_t, ref_t, t, t_f, config):
    batch = x_t.shape[0]
    if ref_t is None:
        return call_eps_model(eps_model, x_t, timestep_tensor(t, batch, x_t)), None
    if config.batch_model_calls:
        both = call_eps_model(
            eps_model,
            torch.cat([x_t, ref_t]),
            torch.cat([timestep_tensor(t, batch, x_t), timestep_tensor(t_f, batch, x_t)]),
        )
        return both[:batch], both[batch:]
    return (
        call_eps_model(eps_model, x_t, timestep_tensor(t, batch, x_t)),
        call_eps_model(eps_model, ref_t, timestep_tensor(t_f, batch, x_t)),
    )


def purify_diffusion(
    eps_model: EpsModel,
    x_diff: torch.Tensor,
    config: PurifierConfig,
    noise: NoiseSource,
    backend: str | None = None,
) -> torch.Tensor:
    """All rounds on ``x_diff: [B, C, H, W]`` in [-1, 1]; returns the purified image in [-1, 1]."""
    t_f = config.forward_noise_steps
    ref_coef = noise_coefficients(t_f)
    exchange_options = dict(
        amplitude_cut_range=config.amplitude_cut_range,
        phase_cut_range=config.phase_cut_range,
        phase_mode=config.phase_mode,
        delta=config.delta,
        reconstruct=config.reconstruct,
    )
    for round_ in config.rounds:
        x_in = x_diff
        x_t = _renoise(x_in, round_.renoise_t, noise.draw("round_renoise", x_in), config, backend)
        for step in round_step_coefficients(round_.timesteps, config.eta):
            renoised = config.exchange and config.reference == "renoised"
            ref_t = None
            if renoised:
                ref_t = x_in * ref_coef.signal + noise.draw("reference_renoise", x_in) * ref_coef.noise
            eps, eps_ref = _model_calls(eps_model, x_t, ref_t, step.t, t_f, config)
            z = noise.draw("ddpm_update_noise", x_t)
            if config.exchange:
                x_t = ops.exchange_update(
                    x_t,
                    eps,
                    ref_t if renoised else x_in,
                    eps_ref,
                    z,
                    step=step,
                    forward_noise_steps=t_f,
                    backend=backend,
                    **exchange_options,
                )
            else:
                x0 = (x_t - eps * step.sqrt_one_minus_abar) / step.sqrt_abar
                x_t = step.sqrt_abar_next * x0 + step.c1 * z + step.c2 * eps
        x_diff = x_t
    return x_diff
