"""The triton backend's ``exchange_update``: launcher and autograd Function.

Chain: ``exchange_update_kernel`` and ``exchange_update_backward_kernel`` (kernels/triton) ->
``ExchangeUpdate`` (here) -> the public ``manipure_fast.ops.exchange_update``. The backward is one
fused launch that recomputes the forward's band spectra from the saved inputs (no activations are
kept) and returns the gradients for x_t, eps, ref_t and eps_ref; the noise's gradient is
``c1 * grad``. ``tests/test_triton_ops.py`` checks it against autograd through the reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..reference.schedule import StepCoefficients, noise_coefficients
from .dft_tables import (
    band_masks,
    band_size,
    band_tables,
    half_band_weights,
    next_pow2,
    nyquist_in_band,
)

MAX_SIDE = 256  # one row of BLOCK_W = next_pow2(W) floats per tile row; beyond this, use reference

# Whether the kernels may hold only the W band's non-negative frequencies (docs/kernels.md, "Half
# the W band"). False makes every plane take the whole band, as before; bench/tune_triton.py times
# the two, and its smoke test checks that they agree.
HALF_BAND_W = True


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

    @classmethod
    def from_step(cls, step: StepCoefficients, forward_noise_steps: int = 50, **options) -> ExchangeParams:
        """One reverse step's parameters: ``step``'s coefficients, the reference estimate's at
        ``forward_noise_steps``, and the exchange ``options`` (the cut ranges and modes)."""
        ref = noise_coefficients(forward_noise_steps)
        return cls(
            step.sqrt_abar,
            step.sqrt_one_minus_abar,
            ref.signal,
            ref.noise,
            step.sqrt_abar_next,
            step.c1,
            step.c2,
            **options,
        )


def _precision(device: torch.device) -> str:
    # Parity needs fp32 products; TF32 (the GPU default) costs ~1e-3 here.
    return "ieee"


@dataclass(frozen=True)
class _Tiling:
    # Rows per block. 32-row blocks on planes up to 64 wide spilled 0.1-0.5 KB per thread in the
    # variants with noise stores, "project" or the backward; 16-row blocks spill nothing there
    # in the sm_90 compile (bench/compile_sm90.py; untimed).
    block_m: int
    block_w: int
    # Columns per chunk of a row block. The fp32 dots are FMA loops that hold their whole K
    # extent per thread: whole 256-wide rows made the row transforms K = 256 dots, and the sm_90
    # compile spilled 4.5 KB (forward) and 16 KB (backward) per thread at 256x256. In 64-column
    # chunks: 0 and 0.5 KB; in 32-column chunks: 0 and 20 bytes (bench/compile_sm90.py;
    # compile-time counts, untimed).
    block_k: int
    h_pad: int
    band_h: int
    # The W band's columns: its non-negative frequencies only when ``half_band_w`` (a real
    # image's spectrum is Hermitian, so the negative ones are the conjugates of their mirrors and
    # the inverse is the real part of a weighted half-band sum), else every band frequency.
    band_w: int
    half_band_w: bool
    # Software-pipeline stages of the row loops. With whole-row tiles, Triton's default 3 stages
    # needed 296 KB of shared memory at 256x256, over an sm_90 block's 227 KB. In column chunks
    # 3 stages need 40 KB (forward) and 60 KB (backward), but the backward spills 0.3 KB more
    # than with 1 stage; wide planes keep 1 stage until a GPU times the two.
    num_stages: int
    # Warps per program. With Triton's default 4 warps, the whole-row kernels got 32 registers
    # and 12-60 KB of spills per thread; 8 warps (W <= 64) and 16 (wider) cut that, before the
    # column chunks cut it further (compile-time counts; untimed).
    num_warps: int


def phase_tolerance(delta: float) -> tuple[float, float]:
    """``(cos delta, sin delta)`` for "project". The kernels keep x0's phase where
    ``cos d >= cos delta``, which means ``|d| <= delta`` only for ``delta <= pi``. A larger delta
    (infinity included) clips nothing, since ``|d| <= pi``: a cosine below -1 says so, where
    ``cos delta`` itself would clip again past pi (and ``math.cos`` refuses infinity)."""
    if delta > math.pi:
        return -2.0, 0.0
    return math.cos(delta), math.sin(delta)


def uses_half_band_w(h: int, w: int, cut: float) -> bool:
    """Whether the kernels take the half W band for an ``h x w`` plane and band radius ``cut``.

    Not when either band holds its axis' Nyquist frequency (even sides up to ``2 floor(cut)``):
    there the spectra are real, and in "project" mode the reference rotates the reference's phase
    by ``-delta`` when x0's has the opposite sign, at a frequency and at its mirror alike. So its
    ``Delta`` is not Hermitian there and ``ifft2`` has an imaginary part that ``"abs"`` keeps; the
    whole band reproduces that, and the half band would drop it."""
    return HALF_BAND_W and not (nyquist_in_band(h, cut) or nyquist_in_band(w, cut))


def _tiling_and_tables(h: int, w: int, params: ExchangeParams, device: torch.device):
    """The tile sizes and the cached band tables, masks and W band weights both kernels read."""
    amplitude_cut, phase_cut = params.amplitude_cut_range, params.phase_cut_range
    half_w = uses_half_band_w(h, w, max(amplitude_cut, phase_cut))
    return _cached_tiling_and_tables(h, w, amplitude_cut, phase_cut, half_w, device)


# Built once per plane shape and cuts: rebuilding it took about 35 us of host time per launch.
@functools.lru_cache(maxsize=128)
def _cached_tiling_and_tables(
    h: int, w: int, amplitude_cut: float, phase_cut: float, half_w: bool, device: torch.device
):
    cut = max(amplitude_cut, phase_cut)
    block_w = next_pow2(w)
    block_m = min(next_pow2(h), 16)
    tiling = _Tiling(
        block_m=block_m,
        block_w=block_w,
        block_k=min(block_w, 32),
        h_pad=math.ceil(h / block_m) * block_m,
        band_h=next_pow2(band_size(h, cut)),
        band_w=next_pow2(band_size(w, cut, half_w)),
        half_band_w=half_w,
        num_stages=3 if block_w <= 64 else 1,
        num_warps=8 if block_w <= 64 else 16,
    )
    cos_h, sin_h = band_tables(h, cut, tiling.band_h, tiling.h_pad, device)
    cos_w, sin_w = band_tables(w, cut, tiling.band_w, block_w, device, half_w)
    amp_mask, phase_mask = band_masks(
        h, w, amplitude_cut, phase_cut, tiling.band_h, tiling.band_w, device, half_w
    )
    # The whole band's kernels do not read the weights; any float32 tensor stands in.
    weights_w = half_band_weights(w, cut, tiling.band_w, device) if half_w else cos_w
    return tiling, (cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask, weights_w)


def launch_exchange_update(
    x_t, eps, ref_t, eps_ref, noise, rng_state, params: ExchangeParams, store_noise: bool = False
):
    """Run the kernel. x_t, eps, ref_t (, eps_ref, noise): fp32 contiguous ``[B, C, H, W]``.
    ``noise=None`` draws Philox noise from ``rng_state`` (int64 ``[2]``: seed, offset, on the
    device) and advances its offset on the device. Returns ``(x_next, noise_used or None)``."""
    from ..kernels.triton.exchange_update import exchange_update_kernel

    b, c, h, w = x_t.shape
    tiling, tables = _tiling_and_tables(h, w, params, x_t.device)
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
        *tables,
        h,
        w,
        tiling.h_pad,
        params.sqrt_abar,
        params.sqrt_one_minus_abar,
        params.ref_sqrt_abar,
        params.ref_sqrt_one_minus_abar,
        params.sqrt_abar_next,
        params.c1,
        params.c2,
        *phase_tolerance(params.delta),
        1.0 / (h * w),
        HAS_EPS_REF=eps_ref is not None,
        NOISE_GIVEN=noise is not None,
        STORE_NOISE=store_noise,
        PROJECT=params.phase_mode == "project",
        RECON_ABS=params.reconstruct == "abs",
        BLOCK_M=tiling.block_m,
        BLOCK_W=tiling.block_w,
        BLOCK_K=tiling.block_k,
        BAND_H=tiling.band_h,
        BAND_W=tiling.band_w,
        HALF_BAND_W=tiling.half_band_w,
        PRECISION=_precision(x_t.device),
        num_stages=tiling.num_stages,
        num_warps=tiling.num_warps,
    )
    if noise is None:
        rng_state[1].add_(b * c * h * w)  # on the device: graph-safe, replays draw fresh noise
        return out, (noise_out if store_noise else None)
    return out, noise


def launch_exchange_update_backward(grad, x_t, eps, ref_t, eps_ref, params: ExchangeParams):
    """The gradients of ``x_next`` for (x_t, eps, ref_t, eps_ref or None), one launch; all
    fp32 contiguous ``[B, C, H, W]``. Reads what the forward read, plus ``grad``."""
    from ..kernels.triton.exchange_update_backward import exchange_update_backward_kernel

    b, c, h, w = x_t.shape
    tiling, tables = _tiling_and_tables(h, w, params, x_t.device)
    g_x_t, g_eps, g_ref_t = _empty_like(x_t), _empty_like(x_t), _empty_like(x_t)
    g_eps_ref = _empty_like(x_t) if eps_ref is not None else None
    exchange_update_backward_kernel[(b * c,)](
        grad,
        x_t,
        eps,
        ref_t,
        eps_ref if eps_ref is not None else x_t,
        g_x_t,
        g_eps,
        g_ref_t,
        g_eps_ref if g_eps_ref is not None else g_ref_t,
        *tables,
        h,
        w,
        tiling.h_pad,
        params.sqrt_abar,
        params.sqrt_one_minus_abar,
        params.ref_sqrt_abar,
        params.ref_sqrt_one_minus_abar,
        params.sqrt_abar_next,
        params.c2,
        *phase_tolerance(params.delta),
        1.0 / (h * w),
        HAS_EPS_REF=eps_ref is not None,
        PROJECT=params.phase_mode == "project",
        RECON_ABS=params.reconstruct == "abs",
        BLOCK_M=tiling.block_m,
        BLOCK_W=tiling.block_w,
        BLOCK_K=tiling.block_k,
        BAND_H=tiling.band_h,
        BAND_W=tiling.band_w,
        HALF_BAND_W=tiling.half_band_w,
        PRECISION=_precision(x_t.device),
        num_stages=tiling.num_stages,
        num_warps=tiling.num_warps,
    )
    return g_x_t, g_eps, g_ref_t, g_eps_ref


@functools.lru_cache(maxsize=1024)
def exchange_params(
    step: StepCoefficients,
    forward_noise_steps: int,
    amplitude_cut_range: float,
    phase_cut_range: float,
    phase_mode: str,
    delta: float,
    reconstruct: str,
) -> ExchangeParams:
    """``ExchangeParams.from_step``, cached: a purification calls every step's parameters again in
    every round and every run, and building them cost about 2 us of host time per call."""
    return ExchangeParams.from_step(
        step,
        forward_noise_steps,
        amplitude_cut_range=amplitude_cut_range,
        phase_cut_range=phase_cut_range,
        phase_mode=phase_mode,
        delta=delta,
        reconstruct=reconstruct,
    )


def exchange_update(x_t, eps, ref_t, eps_ref, noise, rng_state, params: ExchangeParams) -> torch.Tensor:
    """The op on fp32 contiguous tensors: through ``ExchangeUpdate`` where autograd tracks an input,
    else the launch alone (no Function, no saved tensors: a few us less host time per call)."""
    tensors = (x_t, eps, ref_t, eps_ref, noise)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return ExchangeUpdate.apply(*tensors, rng_state, params)
    return launch_exchange_update(*tensors, rng_state, params)[0]


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
        g_x_t, g_eps, g_ref_t, g_eps_ref = launch_exchange_update_backward(
            grad.to(torch.float32).contiguous(),
            x_t,
            eps,
            ref_t,
            eps_ref if ctx.has_eps_ref else None,
            ctx.params,
        )
        g_noise = grad * ctx.params.c1 if ctx.needs_input_grad[4] else None
        return g_x_t, g_eps, g_ref_t, g_eps_ref, g_noise, None, None
