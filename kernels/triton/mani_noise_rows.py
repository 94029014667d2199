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
def _band_rows(band_ptr, row0, BLOCK_W: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows ``row0 .. row0 + BLOCK_M`` of the padded band map (``N_BANDS`` marks padding)."""
    block = row0 + tl.arange(0, BLOCK_M)
    return tl.load(band_ptr + block[:, None] * BLOCK_W + tl.arange(0, BLOCK_W)[None, :])


@triton.jit
def _add_band_sums(sums, values, bands, N_BANDS: tl.constexpr, BANDS_PAD: tl.constexpr):
    """``sums[i] += sum(values[bands == i])`` for each band i; ``sums``: [BANDS_PAD]."""
    band_ids = tl.arange(0, BANDS_PAD)
    for i in tl.static_range(N_BANDS):
        band_sum = tl.sum(tl.sum(tl.where(bands == i, values, 0.0), axis=1), axis=0)
        sums += tl.where(band_ids == i, band_sum, 0.0)
    return sums


@triton.jit
def _gather_bands(vector, bands, N_BANDS: tl.constexpr, BANDS_PAD: tl.constexpr):
    """``vector[bands]`` over a [BLOCK_M, BLOCK_W] block; 0 where no band (padding)."""
    band_ids = tl.arange(0, BANDS_PAD)
    out = tl.zeros(bands.shape, tl.float32)
    for i in tl.static_range(N_BANDS):
        out = tl.where(bands == i, tl.sum(tl.where(band_ids == i, vector, 0.0), axis=0), out)
    return out


@triton.jit
def _band_means(
    x,
    cos_h_ptr,
    sin_h_ptr,
    cw,
    sw,
    band_ptr,
    inv_count_ptr,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Pass 1: the mean |F| of each band, [BANDS_PAD]. Padded rows and columns of F are zero and
    belong to no band."""
    sums = tl.zeros((BANDS_PAD,), tl.float32)
    for row0 in range(0, BLOCK_H, BLOCK_M):
        f_re, f_im = _spectrum_rows(
            x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
        )
        magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
        sums = _add_band_sums(
            sums, magnitude, _band_rows(band_ptr, row0, BLOCK_W, BLOCK_M), N_BANDS, BANDS_PAD
        )
    return sums * tl.load(inv_count_ptr + tl.arange(0, BANDS_PAD))


@triton.jit
def _accumulate_inverse_rows(
    acc,
    re,
    im,
    row0,
    cos_h_ptr,
    sin_h_ptr,
    cw,
    sw,
    HAS_IM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``acc + Re((C_H[:, m] + i S_H[:, m]) (re + i im) (C_W + i S_W))`` for the frequency rows
    m = row0 .. row0 + BLOCK_M: one row block's share of the real part of an unnormalised inverse
    DFT, which is also the adjoint of a real plane's forward DFT. ``im`` is ignored (taken as 0)
    without ``HAS_IM``."""
    if HAS_IM:
        r_re = tl.dot(re, cw, input_precision=PRECISION) - tl.dot(im, sw, input_precision=PRECISION)
        r_im = tl.dot(re, sw, input_precision=PRECISION) + tl.dot(im, cw, input_precision=PRECISION)
    else:
        r_re = tl.dot(re, cw, input_precision=PRECISION)
        r_im = tl.dot(re, sw, input_precision=PRECISION)
    # Columns row0.. of C_H and S_H (symmetric, so the same table entries as their rows).
    dft_h = tl.arange(0, BLOCK_H)[:, None] * BLOCK_H + (row0 + tl.arange(0, BLOCK_M))[None, :]
    acc = tl.dot(tl.load(cos_h_ptr + dft_h), r_re, acc, input_precision=PRECISION)
    return tl.dot(-tl.load(sin_h_ptr + dft_h), r_im, acc, input_precision=PRECISION)


@triton.jit
def _weighted_inverse(
    x,
    weights,
    cos_h_ptr,
    sin_h_ptr,
    cw,
    sw,
    band_ptr,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    SPECTRAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Pass 2: Y = Re(D_H^* G D_W^*), G = w[band] F (or w[band]), accumulated over row blocks of
    G, F recomputed per block."""
    y = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
    for row0 in range(0, BLOCK_H, BLOCK_M):
        weight = _gather_bands(weights, _band_rows(band_ptr, row0, BLOCK_W, BLOCK_M), N_BANDS, BANDS_PAD)
        if SPECTRAL:
            f_re, f_im = _spectrum_rows(
                x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
            )
            y = _accumulate_inverse_rows(
                y,
                weight * f_re,
                weight * f_im,
                row0,
                cos_h_ptr,
                sin_h_ptr,
                cw,
                sw,
                True,
                BLOCK_H,
                BLOCK_M,
                PRECISION,
            )
        else:
            y = _accumulate_inverse_rows(
                y, weight, weight, row0, cos_h_ptr, sin_h_ptr, cw, sw, False, BLOCK_H, BLOCK_M, PRECISION
            )
    return y


@triton.jit
def _streamed_map(
    x,
    cos_h_ptr,
    sin_h_ptr,
    cw,
    sw,
    band_ptr,
    inv_count_ptr,
    gamma,
    eps0,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    SPECTRAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Passes 1 and 2: (band means M, weights w = 1 / (M^gamma + eps0), Y = Re ifft2(G) * HW)."""
    means = _band_means(
        x,
        cos_h_ptr,
        sin_h_ptr,
        cw,
        sw,
        band_ptr,
        inv_count_ptr,
        N_BANDS,
        BANDS_PAD,
        BLOCK_H,
        BLOCK_W,
        BLOCK_M,
        PRECISION,
    )
    weights = 1.0 / (_band_power(means, gamma) + eps0)
    y = _weighted_inverse(
        x,
        weights,
        cos_h_ptr,
        sin_h_ptr,
        cw,
        sw,
        band_ptr,
        N_BANDS,
        BANDS_PAD,
        SPECTRAL,
        BLOCK_H,
        BLOCK_W,
        BLOCK_M,
        PRECISION,
    )
    return means, weights, y


@triton.jit
def _plane_setup(x_ptr, cos_w_ptr, sin_w_ptr, H: tl.constexpr, W: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr):  # fmt: skip
    """This program's plane: (offsets, inside mask, x, C_W, S_W)."""
    base = tl.program_id(0).to(tl.int64) * H * W
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    offs = base + rows[:, None] * W + cols[None, :]
    dft_w = cols[:, None] * BLOCK_W + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)
    return offs, inside, x, tl.load(cos_w_ptr + dft_w), tl.load(sin_w_ptr + dft_w)


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
    offs, inside, x, cw, sw = _plane_setup(x_ptr, cos_w_ptr, sin_w_ptr, H, W, BLOCK_H, BLOCK_W)
    means, weights, y = _streamed_map(
        x, cos_h_ptr, sin_h_ptr, cw, sw, band_ptr, inv_count_ptr, gamma, eps0, N_BANDS, BANDS_PAD, SPECTRAL,
        BLOCK_H, BLOCK_W, BLOCK_M, PRECISION,
    )  # fmt: skip
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
