"""The triton backend's ``mani_noise``: launchers and autograd Function.

Chain: the kernels in ``kernels/triton/mani_noise*.py`` -> ``ManiNoise`` (here) -> the public
``manipure_fast.ops.mani_noise``. Three paths, by plane size (``mani_path``):

- ``"tile"``, up to 32x32 (``MAX_SIDE``): one launch, the whole plane and its spectrum in one
  program. The backward is one fused launch (``mani_noise_backward_kernel``) that recomputes the
  map from x.
- ``"rows"``, up to 64x64 (``ROWS_MAX_SIDE``): one launch, one program per plane, the spectrum
  streamed in blocks of frequency rows (``mani_noise_rows_kernel``), so that only x and the
  inverse's accumulator are held whole. The backward is one fused launch, streamed the same way
  (``mani_noise_rows_backward_kernel``).
- ``"large"``, above (ImageNet's 256x256): a full spectrum does not fit one program's registers,
  so the two transforms are cuFFT half-spectrum ones (``torch.fft.rfft2``/``irfft2``) and
  everything between and after them is two fused kernels (``kernels/triton/mani_noise_large.py``):
  four launches in all.

The ``"large"`` backward is the same transforms around two more fused kernels
(``kernels/triton/mani_noise_large_backward.py``): eight launches, which recompute the forward
from x. Every backward needs the noise the forward used, which the forward stores only when a
gradient is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reference.schedule import noise_coefficients
from .dft_tables import band_inverse_counts, full_tables, half_spectrum_bands, next_pow2, padded_band_map

# The whole-tile kernel's limit. Its fp32 DFTs are FMA dots that hold whole tiles in registers:
# compiled for sm_90 (bench/compile_sm90.py), the 32x32 tile uses 223 registers on half the W
# spectrum, without spills (255 and 0.5 KB of spills on the whole tile), while a 64x64 whole tile
# spilled 93 KB and kept ptxas busy for about ten minutes, which the first launch on a GPU would
# wait for too.
MAX_SIDE = 32
# The streamed kernel's limit: only x and the inverse's accumulator stay whole in registers. At
# 64x64 it spills 1.1 KB per thread and compiles in 4 s. Above, the spectrum goes through cuFFT.
ROWS_MAX_SIDE = 64
ROWS_BLOCK_M = 16  # frequency rows per block of the streamed kernel (tl.dot's minimum)
LARGE_BLOCK = 2048  # elements per tile of the large-plane kernels' sweeps
# The whole-tile kernels hold half the W spectrum (kernels/triton/mani_noise.py, "Half the W
# spectrum"): half the multiply-adds of every W-wide dot. False gives them the whole width, for
# bench/tune_triton.py to time against.
HALF_SPECTRUM_W = True
_NORMALIZE = {"rms": 0, "max": 1, "none": 2}


# Output allocation, one place, so the tests can poison fresh outputs with NaN (unwritten
# outputs must fail).
_empty_like = torch.empty_like


@dataclass(frozen=True)
class ManiParams:
    t: int  # the re-noise timestep
    n_bands: int = 8
    gamma: float = 1.8
    eps0: float = 1e-6
    band_mode: str = "width"
    weight_map: str = "spectral"
    normalize: str = "rms"
    detach_map: bool = False


def _tables(h: int, w: int, params: ManiParams, device: torch.device):
    block_h, block_w = next_pow2(h), next_pow2(w)
    cos_h, sin_h = full_tables(h, block_h, device)
    cos_w, sin_w = full_tables(w, block_w, device)
    bands = padded_band_map(h, w, params.n_bands, params.band_mode, block_h, block_w, device)
    return block_h, block_w, (cos_h, sin_h, cos_w, sin_w, bands)


def _launch_plane_kernel(kernel, x, noise, rng_state, params, store_noise, extra_tables=(), **constexprs):
    """The one-launch kernels' shared call: one program per plane, the DFT and band tables (then
    ``extra_tables``), the scalars, and the constexprs common to both plus ``constexprs``."""
    b, c, h, w = x.shape
    coef = noise_coefficients(params.t)
    block_h, block_w, tables = _tables(h, w, params, x.device)
    out = _empty_like(x)
    noise_out = _empty_like(x) if (noise is None and store_noise) else out
    kernel[(b * c,)](
        x,
        noise if noise is not None else x,
        out,
        noise_out,
        rng_state if rng_state is not None else x,
        *tables,
        *extra_tables,
        h,
        w,
        coef.signal,
        coef.noise,
        params.gamma,
        params.eps0,
        1.0 / (h * w),
        N_BANDS=params.n_bands,
        SPECTRAL=params.weight_map == "spectral",
        NORMALIZE=_NORMALIZE[params.normalize],
        NOISE_GIVEN=noise is not None,
        STORE_NOISE=store_noise,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        PRECISION="ieee",
        **constexprs,
    )
    if noise is None:
        rng_state[1].add_(b * c * h * w)
        return out, (noise_out if store_noise else None)
    return out, noise


def tile_half_width(w: int) -> int:
    """The whole-tile kernels' ``HALF``: the W frequencies they hold, half the tile (at least
    ``tl.dot``'s 16), or the whole tile without ``HALF_SPECTRUM_W``."""
    block_w = next_pow2(w)
    return max(block_w // 2, 16) if HALF_SPECTRUM_W else block_w


def launch_mani_noise(x, noise, rng_state, params: ManiParams, store_noise: bool = False):
    """x (, noise): fp32 contiguous ``[B, C, H, W]``, H and W <= MAX_SIDE. Returns ``(out, noise_used)``;
    ``noise_used`` is None when Philox noise was drawn and not stored."""
    from ..kernels.triton.mani_noise import mani_noise_kernel

    # 8 warps: at 32x32 (compiled for sm_90; untimed) 223 registers and no spills, where 4 take
    # 255 (no spills) and 16 take 128 and spill 4 B per thread.
    half = tile_half_width(x.shape[-1])
    return _launch_plane_kernel(
        mani_noise_kernel, x, noise, rng_state, params, store_noise, HALF=half, num_warps=8
    )


def launch_mani_noise_rows(x, noise, rng_state, params: ManiParams, store_noise: bool = False):
    """The streamed one-launch path; same contract as ``launch_mani_noise``, for H and W <=
    ``ROWS_MAX_SIDE``."""
    from ..kernels.triton.mani_noise_rows import mani_noise_rows_kernel

    h, w = x.shape[-2:]
    bands_pad = next_pow2(params.n_bands + 1, minimum=2)
    inverse_counts = band_inverse_counts(h, w, params.n_bands, params.band_mode, bands_pad, x.device)
    return _launch_plane_kernel(
        mani_noise_rows_kernel,
        x,
        noise,
        rng_state,
        params,
        store_noise,
        extra_tables=(inverse_counts,),
        BANDS_PAD=bands_pad,
        BLOCK_M=min(ROWS_BLOCK_M, next_pow2(h)),
        # 8 warps at 64x64 (compiled for sm_90; untimed): 1.1 KB of spills per thread, where 4
        # spilled 3.2 KB and 16 spilled 9.5 KB.
        num_warps=8,
    )


def _large_band_weights(spectrum, weighted, stats, width: int, params: ManiParams):
    """``mani_band_weights_kernel`` over the complex half spectra ``[B, C, H, width//2 + 1]`` of
    planes ``width`` wide: G into ``weighted`` (which may be ``spectrum``), and each plane's band
    means and weights into ``stats`` (``[B*C, 2, BANDS_PAD]`` float32) unless it is None."""
    from ..kernels.triton.mani_noise_large import mani_band_weights_kernel

    b, c, h, half = spectrum.shape
    bands, share = half_spectrum_bands(h, width, params.n_bands, params.band_mode, spectrum.device)
    mani_band_weights_kernel[(b * c,)](
        torch.view_as_real(spectrum),
        torch.view_as_real(weighted),
        stats if stats is not None else share,
        bands,
        share,
        h * half,
        params.gamma,
        params.eps0,
        N_BANDS=params.n_bands,
        BANDS_PAD=_bands_pad(params),
        SPECTRAL=params.weight_map == "spectral",
        STORE_STATS=stats is not None,
        BLOCK=LARGE_BLOCK,
    )


def _bands_pad(params: ManiParams) -> int:
    """The band arrays' power-of-two length in the kernels: the bands and one past them."""
    return next_pow2(params.n_bands + 1, minimum=2)


def launch_mani_noise_large(x, noise, rng_state, params: ManiParams, store_noise: bool = False):
    """The large-plane path: rfft2, the band-weights kernel, irfft2, the injection kernel. Same
    contract as ``launch_mani_noise``, for any plane size."""
    from ..kernels.triton.mani_noise_large import mani_inject_kernel

    b, c, h, w = x.shape
    coef = noise_coefficients(params.t)
    spectrum = torch.fft.rfft2(x)
    _large_band_weights(spectrum, spectrum, None, w, params)  # G over F
    shaped = torch.fft.irfft2(spectrum, s=(h, w))
    out = _empty_like(x)
    noise_out = _empty_like(x) if (noise is None and store_noise) else out
    mani_inject_kernel[(b * c,)](
        x,
        shaped,
        noise if noise is not None else x,
        out,
        noise_out,
        rng_state if rng_state is not None else x,
        h * w,
        coef.signal,
        coef.noise,
        1.0 / (h * w),
        NORMALIZE=_NORMALIZE[params.normalize],
        NOISE_GIVEN=noise is not None,
        STORE_NOISE=store_noise,
        BLOCK=LARGE_BLOCK,
    )
    if noise is None:
        rng_state[1].add_(b * c * h * w)
        return out, (noise_out if store_noise else None)
    return out, noise


def launch_mani_noise_large_backward(grad, x, noise, params: ManiParams, noise_grad: bool):
    """The large-plane path's backward (``kernels/triton/mani_noise_large_backward.py``): the
    forward recomputed (rfft2, the band-weights kernel, irfft2), the map-gradient kernel, rfft2,
    the spectrum-gradient kernel, irfft2. Same contract as ``launch_mani_noise_backward``, for any
    plane size."""
    from ..kernels.triton.mani_noise_large_backward import (
        mani_map_gradient_kernel,
        mani_spectrum_gradient_kernel,
    )

    b, c, h, w = x.shape
    coef = noise_coefficients(params.t)
    if params.detach_map and not noise_grad:
        return grad * coef.signal, None  # the map's value is not needed: nothing to recompute
    spectrum = torch.fft.rfft2(x)
    weighted = torch.empty_like(spectrum)
    stats = torch.empty(b * c, 2, _bands_pad(params), dtype=torch.float32, device=x.device)
    _large_band_weights(spectrum, weighted, stats, w, params)
    shaped = torch.fft.irfft2(weighted, s=(h, w))
    g_noise = _empty_like(x) if noise_grad else None
    g_shaped = shaped if params.detach_map else _empty_like(x)  # g_Y / N; unwritten when detached
    mani_map_gradient_kernel[(b * c,)](
        grad,
        noise,
        shaped,
        g_shaped,
        g_noise if noise_grad else shaped,
        h * w,
        coef.noise,
        1.0 / (h * w),
        NORMALIZE=_NORMALIZE[params.normalize],
        NOISE_GRAD=noise_grad,
        DETACH_MAP=params.detach_map,
        BLOCK=LARGE_BLOCK,
    )
    if params.detach_map:
        return grad * coef.signal, g_noise
    g_spectrum = torch.fft.rfft2(g_shaped)
    bands, share = half_spectrum_bands(h, w, params.n_bands, params.band_mode, x.device)
    mani_spectrum_gradient_kernel[(b * c,)](
        torch.view_as_real(g_spectrum),
        torch.view_as_real(spectrum),
        stats,
        bands,
        share,
        h * (w // 2 + 1),
        params.gamma,
        N_BANDS=params.n_bands,
        BANDS_PAD=_bands_pad(params),
        SPECTRAL=params.weight_map == "spectral",
        BLOCK=LARGE_BLOCK,
    )
    # g_x = sqrt(abar) grad + the unnormalised inverse of g_F (the 1/N was taken in g_Y / N).
    return torch.fft.irfft2(g_spectrum, s=(h, w), norm="forward").add_(grad, alpha=coef.signal), g_noise


def mani_path(h: int, w: int) -> str:
    """The path a ``h x w`` plane takes: ``"tile"``, ``"rows"`` or ``"large"`` (module docstring)."""
    side = max(h, w)
    return "tile" if side <= MAX_SIDE else "rows" if side <= ROWS_MAX_SIDE else "large"


# The forward launcher of each path (``mani_path``); BACKWARD_LAUNCHERS, below, has their backwards.
FORWARD_LAUNCHERS = {
    "tile": launch_mani_noise,
    "rows": launch_mani_noise_rows,
    "large": launch_mani_noise_large,
}


def _launch_plane_backward(kernel, grad, x, noise, params, noise_grad, extra_tables=(), **constexprs):
    """The fused backwards' shared call (as ``_launch_plane_kernel``): ``(g_x, g_noise or None)``."""
    b, c, h, w = x.shape
    coef = noise_coefficients(params.t)
    block_h, block_w, tables = _tables(h, w, params, x.device)
    g_x = _empty_like(x)
    g_noise = _empty_like(x) if noise_grad else None
    kernel[(b * c,)](
        grad,
        x,
        noise,
        g_x,
        g_noise if noise_grad else g_x,
        *tables,
        *extra_tables,
        h,
        w,
        coef.signal,
        coef.noise,
        params.gamma,
        params.eps0,
        1.0 / (h * w),
        N_BANDS=params.n_bands,
        SPECTRAL=params.weight_map == "spectral",
        NORMALIZE=_NORMALIZE[params.normalize],
        DETACH_MAP=params.detach_map,
        NOISE_GRAD=noise_grad,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        PRECISION="ieee",
        **constexprs,
    )
    return g_x, g_noise


def launch_mani_noise_backward(grad, x, noise, params: ManiParams, noise_grad: bool):
    """The gradients of ``out`` for x and (when ``noise_grad``) for the noise, one launch; grad,
    x and noise: fp32 contiguous ``[B, C, H, W]``, H and W <= MAX_SIDE. Returns ``(g_x, g_noise
    or None)``."""
    from ..kernels.triton.mani_noise_backward import mani_noise_backward_kernel

    # 8 warps: at 32x32 (compiled for sm_90; untimed) 255 registers and 556 B of spill stores
    # per thread, where 16 warps take 128 and spill 800 B, and Triton's default 4 spill 1.5 KB.
    # (On the whole W spectrum, 16 warps spilled 0.8 KB and 8 spilled 0.9 KB; once the inverse
    # formed only Re Y, 4 collapsed to 32 registers and 10.8 KB.)
    return _launch_plane_backward(
        mani_noise_backward_kernel,
        grad,
        x,
        noise,
        params,
        noise_grad,
        HALF=tile_half_width(x.shape[-1]),
        num_warps=8,
    )


def launch_mani_noise_rows_backward(grad, x, noise, params: ManiParams, noise_grad: bool):
    """The streamed path's fused backward, one launch; same contract as
    ``launch_mani_noise_backward``, for H and W <= ``ROWS_MAX_SIDE``."""
    from ..kernels.triton.mani_noise_rows_backward import mani_noise_rows_backward_kernel

    h, w = x.shape[-2:]
    bands_pad = next_pow2(params.n_bands + 1, minimum=2)
    return _launch_plane_backward(
        mani_noise_rows_backward_kernel,
        grad,
        x,
        noise,
        params,
        noise_grad,
        extra_tables=(band_inverse_counts(h, w, params.n_bands, params.band_mode, bands_pad, x.device),),
        BANDS_PAD=bands_pad,
        BLOCK_M=min(ROWS_BLOCK_M, next_pow2(h)),
        # 8 warps at 64x64 (compiled for sm_90; untimed): 5.2 KB of spills per thread with the
        # spectral map; 4 and 16 warps spilled more.
        num_warps=8,
    )


BACKWARD_LAUNCHERS = {
    "tile": launch_mani_noise_backward,
    "rows": launch_mani_noise_rows_backward,
    "large": launch_mani_noise_large_backward,
}


def mani_noise(x, noise, rng_state, params: ManiParams) -> torch.Tensor:
    """The op on fp32 contiguous tensors: through ``ManiNoise`` where autograd tracks an input
    (storing in-kernel noise only when x's gradient will need it), else the launch alone."""
    if torch.is_grad_enabled() and (x.requires_grad or (noise is not None and noise.requires_grad)):
        return ManiNoise.apply(x, noise, rng_state, params, x.requires_grad)
    return FORWARD_LAUNCHERS[mani_path(*x.shape[-2:])](x, noise, rng_state, params, store_noise=False)[0]


class ManiNoise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, rng_state, params: ManiParams, needs_grad: bool):
        out, used = FORWARD_LAUNCHERS[mani_path(*x.shape[-2:])](
            x, noise, rng_state, params, store_noise=needs_grad
        )
        ctx.params = params
        ctx.save_for_backward(x, used if used is not None else x)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, z = ctx.saved_tensors
        g_x, g_noise = BACKWARD_LAUNCHERS[mani_path(*x.shape[-2:])](
            grad.to(torch.float32).contiguous(), x, z, ctx.params, noise_grad=ctx.needs_input_grad[1]
        )
        return g_x, g_noise, None, None, None
