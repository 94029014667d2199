"""Fused MANI noise injection for planes from 33 to 64 on a side: one launch, one program per
plane, with the spectrum streamed in blocks of ``BLOCK_M`` frequency rows.

The whole-tile kernel (``mani_noise.py``) holds x, F, |F|, the weights, Y and all four DFT
matrices in registers at once; at 64x64 that is about 15 tiles of 4096 floats, and compiled for
sm_90 it spilled 93 KB per thread. Here only x and the accumulator Y stay whole:

    pass 1, per row block m:  F[m] = (C_H[m] - i S_H[m]) x (C_W - i S_W)
                              band sums += |F[m]| over each band           -> w_i = 1/(M_i^g + eps0)
    pass 2, per row block m:  G[m] = w[band] F[m]   (F[m] recomputed; or w[band])
                              Y += Re((C_H[:, m] + i S_H[:, m]) G[m] (C_W + i S_W))
    then                      W = |Y| / HW, normalised;  out = sqrt(abar) x + sqrt(1 - abar) W z

Only the real part of the inverse is formed. G is Hermitian (the band map is symmetric under
k -> -k and F is the spectrum of a real plane), so ``ifft2(G)`` is real and the reference's
``|ifft2(G)|`` differs from ``|Re ifft2(G)|`` by the rounding of an imaginary part that is zero
in exact arithmetic. Recomputing F in pass 2 costs 6 of the 18 row-block matmuls; keeping it would
need a 32 KB spectrum per plane in registers (the spill this kernel avoids) or global scratch.

Memory traffic per plane is the whole-tile kernel's: read x (and z when given), write out (and z
when it is kept for the backward). The DFT rows are re-read per block, from L1/L2.
"""

import triton
import triton.language as tl

from .mani_noise import _band_power, _normalize_and_inject


@triton.jit
def _spectrum_rows(
    x,
    row0,
    cos_h_ptr,
    sin_h_ptr,
    cw,
    sw,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Rows ``row0 .. row0 + BLOCK_M`` of F = (C_H - i S_H) x (C_W - i S_W): (re, im), [BLOCK_M, BLOCK_W]."""
    block = row0 + tl.arange(0, BLOCK_M)
    rows = tl.arange(0, BLOCK_H)
    dft_h = block[:, None] * BLOCK_H + rows[None, :]
    a = tl.dot(tl.load(cos_h_ptr + dft_h), x, input_precision=PRECISION)
    b = tl.dot(tl.load(sin_h_ptr + dft_h), x, input_precision=PRECISION)
    f_re = tl.dot(a, cw, input_precision=PRECISION) - tl.dot(b, sw, input_precision=PRECISION)
    f_im = -(tl.dot(b, cw, input_precision=PRECISION) + tl.dot(a, sw, input_precision=PRECISION))
    return f_re, f_im


@triton.jit
def mani_noise_rows_kernel(
    x_ptr,
    noise_ptr,
    out_ptr,
    noise_out_ptr,
    rng_ptr,
    cos_h_ptr,
    sin_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    band_ptr,
    inv_count_ptr,
    H: tl.constexpr,
    W: tl.constexpr,
    signal,
    noise_scale,
    gamma,
    eps0,
    inv_hw,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    SPECTRAL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Tables as ``mani_noise_kernel``'s (full DFT matrices zero-padded to [BLOCK_H, BLOCK_H] and
    [BLOCK_W, BLOCK_W], the band map padded with ``N_BANDS``), plus ``inv_count``: float32
    ``[BANDS_PAD]``, one over each band's size (0 past ``N_BANDS``)."""
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * H * W
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    offs = base + rows[:, None] * W + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)
    band_ids = tl.arange(0, BANDS_PAD)
    block = tl.arange(0, BLOCK_M)
    dft_w = cols[:, None] * BLOCK_W + cols[None, :]
    cw = tl.load(cos_w_ptr + dft_w)
    sw = tl.load(sin_w_ptr + dft_w)

    # Pass 1: the band means. Padded rows and columns of F are zero and belong to no band.
    sums = tl.zeros((BANDS_PAD,), tl.float32)
    for row0 in range(0, BLOCK_H, BLOCK_M):
        f_re, f_im = _spectrum_rows(
            x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
        )
        magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
        bands = tl.load(band_ptr + (row0 + block)[:, None] * BLOCK_W + cols[None, :])
        for i in tl.static_range(N_BANDS):
            band_sum = tl.sum(tl.sum(tl.where(bands == i, magnitude, 0.0), axis=1), axis=0)
            sums += tl.where(band_ids == i, band_sum, 0.0)
    weights = 1.0 / (_band_power(sums * tl.load(inv_count_ptr + band_ids), gamma) + eps0)

    # Pass 2: Y = Re(D_H^* G D_W^*), accumulated over row blocks of G.
    y = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
    for row0 in range(0, BLOCK_H, BLOCK_M):
        bands = tl.load(band_ptr + (row0 + block)[:, None] * BLOCK_W + cols[None, :])
        weight = tl.zeros((BLOCK_M, BLOCK_W), tl.float32)  # padding stays 0: no band
        for i in tl.static_range(N_BANDS):
            weight = tl.where(bands == i, tl.sum(tl.where(band_ids == i, weights, 0.0), axis=0), weight)
        if SPECTRAL:
            f_re, f_im = _spectrum_rows(
                x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
            )
            g_re = weight * f_re
            g_im = weight * f_im
            r_re = tl.dot(g_re, cw, input_precision=PRECISION) - tl.dot(g_im, sw, input_precision=PRECISION)
            r_im = tl.dot(g_re, sw, input_precision=PRECISION) + tl.dot(g_im, cw, input_precision=PRECISION)
        else:
            r_re = tl.dot(weight, cw, input_precision=PRECISION)
            r_im = tl.dot(weight, sw, input_precision=PRECISION)
        # Columns row0.. of C_H and S_H (symmetric, so the same table entries as their rows).
        dft_h = rows[:, None] * BLOCK_H + (row0 + block)[None, :]
        y = tl.dot(tl.load(cos_h_ptr + dft_h), r_re, y, input_precision=PRECISION)
        y = tl.dot(-tl.load(sin_h_ptr + dft_h), r_im, y, input_precision=PRECISION)

    shaped = tl.where(inside, tl.abs(y) * inv_hw, 0.0)
    _normalize_and_inject(
        shaped,
        x,
        offs,
        inside,
        noise_ptr,
        out_ptr,
        noise_out_ptr,
        rng_ptr,
        signal,
        noise_scale,
        inv_hw,
        NORMALIZE,
        NOISE_GIVEN,
        STORE_NOISE,
    )
