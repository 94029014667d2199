"""The ops floor: public fused ops, dispatched to a backend (see ``registry``).

    mani_noise(x, t, noise=None, *, rng_state=None, ...)            -> x_t      [B, C, H, W]
    exchange_update(x_t, eps, ref_t, eps_ref, noise=None, *, ...)   -> x_next   [B, C, H, W]

Noise is either given (``noise``, a tensor like ``x``) or, on the triton and cuda backends, drawn in
the kernel from Philox with ``rng_state`` (int64 ``[2]`` = seed, offset, on the device; the offset is
advanced on the device, so captured graphs draw fresh noise on every replay).
All ops compute in fp32 and are differentiable with respect to their image inputs.
"""

from __future__ import annotations

import torch

from ..options import check_exchange_options, check_mani_options, check_timestep
from ..reference.exchange import exchange_update as _reference_exchange_update
from ..reference.mani import mani_noise as _reference_mani_noise
from ..reference.schedule import StepCoefficients, noise_coefficients
from .registry import BACKENDS, select_backend, unsupported_reason, use_backend

__all__ = ["BACKENDS", "exchange_update", "mani_noise", "select_backend", "unsupported_reason", "use_backend"]


def _check_like(name: str, tensor: torch.Tensor | None, like: torch.Tensor) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.shape != like.shape or tensor.device != like.device:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} on {tensor.device}, expected "
            f"{tuple(like.shape)} on {like.device}"
        )


def _noise_arguments(noise, rng_state, like, backend):
    if (noise is None) == (rng_state is None):
        raise ValueError("pass exactly one of noise= (a tensor) and rng_state= (device seed/offset)")
    if rng_state is not None:
        if backend not in ("triton", "cuda"):
            raise ValueError(
                f"rng_state (in-kernel Philox noise) needs the triton or cuda backend, not {backend!r}"
            )
        if rng_state.dtype != torch.int64 or rng_state.shape != (2,) or rng_state.device != like.device:
            raise ValueError(
                f"rng_state must be an int64 [2] tensor on {like.device}, got "
                f"{rng_state.dtype} {tuple(rng_state.shape)} on {rng_state.device}"
            )


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    # The common case (already fp32 and contiguous) returns at once: ``.to().contiguous()`` cost
    # about 1 us of host time per tensor, five tensors per exchange call.
    if t is None or (t.dtype is torch.float32 and t.is_contiguous()):
        return t
    return t.to(torch.float32).contiguous()


def _bounded_cut(cut: float, like: torch.Tensor) -> float:
    """The cut radius, at most ``H + W``: every coefficient lies within ``(H + W) / 2`` of DC, so
    a larger radius (infinity included) exchanges the same coefficients, and the fast backends
    size their band tables from a finite one."""
    return min(float(cut), float(like.shape[-2] + like.shape[-1]))


def mani_noise(
    x: torch.Tensor,
    t: int,
    noise: torch.Tensor | None = None,
    *,
    rng_state: torch.Tensor | None = None,
    n_bands: int = 8,
    gamma: float = 1.8,
    eps0: float = 1e-6,
    band_mode: str = "width",
    weight_map: str = "spectral",
    normalize: str = "rms",
    detach_map: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """MANI re-noising ``sqrt(abar_t) x + sqrt(1 - abar_t) W z`` (SPEC §1), x: ``[B, C, H, W]``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    _check_like("noise", noise, x)
    check_timestep("t", t)
    check_mani_options(n_bands, gamma, eps0, band_mode, weight_map, normalize)
    # numpy scalars pass the checks; the backends take Python numbers (Triton's constexprs too).
    t, n_bands, gamma, eps0 = int(t), int(n_bands), float(gamma), float(eps0)
    name = select_backend("mani_noise", x, backend, n_bands)
    _noise_arguments(noise, rng_state, x, name)
    options = dict(
        n_bands=n_bands,
        gamma=gamma,
        eps0=eps0,
        band_mode=band_mode,
        weight_map=weight_map,
        normalize=normalize,
    )
    if name == "reference":
        return _reference_mani_noise(x, t, noise, detach_map=detach_map, **options)
    if name == "cuda":
        from . import cuda_ops

        return cuda_ops.mani_noise(_fp32(x), _fp32(noise), rng_state, t, detach_map=detach_map, **options)
    from . import triton_mani

    params = triton_mani.ManiParams(t, detach_map=detach_map, **options)
    return triton_mani.mani_noise(_fp32(x), _fp32(noise), rng_state, params)


def exchange_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    ref_t: torch.Tensor,
    eps_ref: torch.Tensor | None,
    noise: torch.Tensor | None = None,
    *,
    step: StepCoefficients,
    forward_noise_steps: int = 50,
    rng_state: torch.Tensor | None = None,
    amplitude_cut_range: float = 10,
    phase_cut_range: float = 10,
    phase_mode: str = "replace",
    delta: float = 0.3,
    reconstruct: str = "abs",
    backend: str | None = None,
) -> torch.Tensor:
    """One reverse step after the model call (``reference.exchange_update``): x0 from (x_t, eps),
    x_ref0 from (ref_t, eps_ref) at ``forward_noise_steps`` (or ``ref_t`` itself when eps_ref is
    None), the frequency exchange, and ``x_next = sqrt(abar_next) x0 + c1 z + c2 eps``."""
    if not isinstance(x_t, torch.Tensor) or x_t.ndim != 4:
        raise ValueError(
            f"x_t must be a [B, C, H, W] tensor, got {getattr(x_t, 'shape', type(x_t).__name__)}"
        )
    for name_, tensor in (("eps", eps), ("ref_t", ref_t), ("eps_ref", eps_ref), ("noise", noise)):
        _check_like(name_, tensor, x_t)
    if not isinstance(step, StepCoefficients):
        raise TypeError(
            f"step must be the StepCoefficients of one reverse step (reference.step_coefficients(t, "
            f"t_next, eta)), got {type(step).__name__}"
        )
    check_timestep("forward_noise_steps", forward_noise_steps)
    check_exchange_options(amplitude_cut_range, phase_cut_range, phase_mode, delta, reconstruct)
    forward_noise_steps, delta = int(forward_noise_steps), float(delta)
    name = select_backend("exchange_update", x_t, backend)
    _noise_arguments(noise, rng_state, x_t, name)
    amplitude_cut_range = _bounded_cut(amplitude_cut_range, x_t)
    phase_cut_range = _bounded_cut(phase_cut_range, x_t)
    if name == "triton":
        from . import triton_exchange

        params = triton_exchange.exchange_params(
            step, forward_noise_steps, amplitude_cut_range, phase_cut_range, phase_mode, delta, reconstruct
        )
        inputs = (_fp32(x_t), _fp32(eps), _fp32(ref_t), _fp32(eps_ref), _fp32(noise))
        return triton_exchange.exchange_update(*inputs, rng_state, params)
    ref = noise_coefficients(forward_noise_steps)
    coefficients = dict(
        sqrt_abar=step.sqrt_abar,
        sqrt_one_minus_abar=step.sqrt_one_minus_abar,
        ref_sqrt_abar=ref.signal,
        ref_sqrt_one_minus_abar=ref.noise,
        sqrt_abar_next=step.sqrt_abar_next,
        c1=step.c1,
        c2=step.c2,
        amplitude_cut_range=amplitude_cut_range,
        phase_cut_range=phase_cut_range,
        phase_mode=phase_mode,
        delta=delta,
        reconstruct=reconstruct,
    )
    if name == "reference":
        return _reference_exchange_update(x_t, eps, ref_t, eps_ref, noise, **coefficients)
    from . import cuda_ops

    return cuda_ops.exchange_update(
        *(_fp32(t) for t in (x_t, eps, ref_t, eps_ref, noise)),
        rng_state,
        [float(coefficients[k]) for k in cuda_ops.COEFFICIENTS],
        amplitude_cut_range,
        phase_cut_range,
        phase_mode == "project",
        reconstruct == "real",
    )
