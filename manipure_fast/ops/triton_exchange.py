"""The triton backend's ``exchange_update``: launcher and autograd Function.

Chain: ``exchange_update_kernel`` (kernels/triton) -> ``ExchangeUpdate`` (here) -> the public
``manipure_fast.ops.exchange_update``. The backward recomputes through the reference composition
(``torch.func.vjp`` of ``reference.exchange_update``), which is exact and simple; a fused backward
kernel is future work. The noise term has no gradient, so backward needs no noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..reference.exchange import exchange_update as reference_exchange_update
from .dft_tables import band_frequencies, band_masks, band_tables, next_pow2

MAX_SIDE = 256  # one row of BLOCK_W = next_pow2(W) floats per tile row; beyond this, use reference


# Output allocation, one place, so the tests can poison fresh outputs with NaN (unwritten
# outputs must fail).
_empty_like = torch.empty_like


@dataclass(frozen=True)
class ExchangeParams:
    sqrt_abar: float
    sqrt_one_minus_abar: float
    ref_sqrt_abar: float
    ref_sqrt_one_minus_abar: float
    sqrt_abar_next: float
    c1: float
    c2: float
    amplitude_cut_range: float = 10
    phase_cut_range: float = 10
    phase_mode: str = "replace"
    delta: float = 0.3
    reconstruct: str = "abs"


def _precision(device: torch.device) -> str:
    # Parity needs fp32 products; TF32 (the GPU default) costs ~1e-3 here.
    return "ieee"


def launch_exchange_update(
    x_t, eps, ref_t, eps_ref, noise, rng_state, params: ExchangeParams, store_noise: bool = False
):
    """Run the kernel. x_t, eps, ref_t (, eps_ref, noise): fp32 contiguous ``[B, C, H, W]``.
    ``noise=None`` draws Philox noise from ``rng_state`` (int64 ``[2]``: seed, offset, on the
    device) and advances its offset on the device. Returns ``(x_next, noise_used or None)``."""
    from ..kernels.triton.exchange_update import exchange_update_kernel

    b, c, h, w = x_t.shape
    cut = max(params.amplitude_cut_range, params.phase_cut_range)
    block_w = next_pow2(w)
    block_m = min(next_pow2(h), 32 if w <= 64 else 16)
    h_pad = math.ceil(h / block_m) * block_m
    band_h = next_pow2(band_frequencies(h, cut).numel())
    band_w = next_pow2(band_frequencies(w, cut).numel())
    cos_h, sin_h = band_tables(h, cut, band_h, h_pad, x_t.device)
    cos_w, sin_w = band_tables(w, cut, band_w, block_w, x_t.device)
    amp_mask, phase_mask = band_masks(
        h, w, params.amplitude_cut_range, params.phase_cut_range, band_h, band_w, x_t.device
    )
    out = _empty_like(x_t)
    noise_out = _empty_like(x_t) if (noise is None and store_noise) else out
    exchange_update_kernel[(b * c,)](
        x_t,
        eps,
        ref_t,
        eps_ref if eps_ref is not None else x_t,
        noise if noise is not None else x_t,
        out,
        noise_out,
        rng_state if rng_state is not None else x_t,
        cos_h,
        sin_h,
        cos_w,
        sin_w,
        amp_mask,
        phase_mask,
        h,
        w,
        h_pad,
        params.sqrt_abar,
        params.sqrt_one_minus_abar,
        params.ref_sqrt_abar,
        params.ref_sqrt_one_minus_abar,
        params.sqrt_abar_next,
        params.c1,
        params.c2,
        math.cos(params.delta),
        math.sin(params.delta),
        1.0 / (h * w),
        HAS_EPS_REF=eps_ref is not None,
        NOISE_GIVEN=noise is not None,
        STORE_NOISE=store_noise,
        PROJECT=params.phase_mode == "project",
        RECON_ABS=params.reconstruct == "abs",
        BLOCK_M=block_m,
        BLOCK_W=block_w,
        BAND_H=band_h,
        BAND_W=band_w,
        PRECISION=_precision(x_t.device),
    )
    if noise is None:
        rng_state[1].add_(b * c * h * w)  # on the device: graph-safe, replays draw fresh noise
        return out, (noise_out if store_noise else None)
    return out, noise


class ExchangeUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_t, eps, ref_t, eps_ref, noise, rng_state, params: ExchangeParams):
        out, _ = launch_exchange_update(x_t, eps, ref_t, eps_ref, noise, rng_state, params)
        ctx.params = params
        ctx.has_eps_ref = eps_ref is not None
        ctx.save_for_backward(x_t, eps, ref_t, eps_ref if eps_ref is not None else x_t)
        return out

    @staticmethod
    def backward(ctx, grad):
        x_t, eps, ref_t, eps_ref = ctx.saved_tensors
        kwargs = asdict(ctx.params)
        zeros = torch.zeros_like(x_t)
        if ctx.has_eps_ref:
            fn = lambda a, b_, r, er: reference_exchange_update(a, b_, r, er, zeros, **kwargs)  # noqa: E731
            _, vjp = torch.func.vjp(fn, x_t, eps, ref_t, eps_ref)
            g = vjp(grad)
            return g[0], g[1], g[2], g[3], None, None, None
        fn = lambda a, b_, r: reference_exchange_update(a, b_, r, None, zeros, **kwargs)  # noqa: E731
        _, vjp = torch.func.vjp(fn, x_t, eps, ref_t)
        g = vjp(grad)
        return g[0], g[1], g[2], None, None, None, None
