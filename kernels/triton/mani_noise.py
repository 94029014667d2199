"""Fused MANI noise injection for planes up to 32x32: one launch, one program per (image, channel)
plane, the whole plane in one tile (``mani_noise_rows.py`` streams planes up to 64x64). Its stages
are shared with the backward and the streamed kernels.

    F = D_H x D_W (full DFT as real matmuls)        |F|, band means M_i over the band map
    w_i = 1 / (M_i^gamma + eps0)                    W = |Re ifft2(w[band] F)|  (or of w[band])
    W normalised (rms / max / none)                 z ~ N(0, 1) (Philox from device seed/offset, or given)
    out = sqrt(abar) x + sqrt(1 - abar) (W z)

Memory traffic per plane: reads x (and z when given), writes out (and z when it must be kept for
the backward). The band loop is unrolled over ``N_BANDS``.
"""

import triton
import triton.language as tl

from .noise import _noise, _seed_offset


@triton.jit
def _dft_real(x, ch, sh, cw, sw, PRECISION: tl.constexpr):
    """F = (C_H - i S_H) x (C_W - i S_W) for a real plane: (re, im)."""
    a = tl.dot(ch, x, input_precision=PRECISION)
    b = tl.dot(sh, x, input_precision=PRECISION)
    f_re = tl.dot(a, cw, input_precision=PRECISION) - tl.dot(b, sw, input_precision=PRECISION)
    f_im = -(tl.dot(b, cw, input_precision=PRECISION) + tl.dot(a, sw, input_precision=PRECISION))
    return f_re, f_im


@triton.jit
def _inverse_real(re, im, ch, sh, cw, sw, PRECISION: tl.constexpr):
    """Re((C_H + i S_H) (re + i im) (C_W + i S_W)): the real part of an unnormalised inverse DFT,
    which is also the adjoint of a real plane's DFT."""
    p = tl.dot(ch, re, input_precision=PRECISION) - tl.dot(sh, im, input_precision=PRECISION)
    q = tl.dot(sh, re, input_precision=PRECISION) + tl.dot(ch, im, input_precision=PRECISION)
    return tl.dot(p, cw, input_precision=PRECISION) - tl.dot(q, sw, input_precision=PRECISION)


@triton.jit
def _band_mean(magnitude, selected):
    """The mean of ``magnitude`` over the selected coefficients (0 for an empty band), and the count."""
    count = tl.sum(tl.sum(selected.to(tl.float32), axis=1), axis=0)
    total = tl.sum(tl.sum(tl.where(selected, magnitude, 0.0), axis=1), axis=0)
    return total / tl.maximum(count, 1.0), tl.maximum(count, 1.0)


@triton.jit
def _band_power(mean, gamma):
    """M^gamma via exp(gamma log M); an all-zero band has M^gamma = 0, as torch.pow(0, gamma)."""
    return tl.where(mean > 0, tl.exp(gamma * tl.log(tl.where(mean > 0, mean, 1.0))), 0.0)


@triton.jit
def _band_weights(
    magnitude, bands, gamma, eps0, N_BANDS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr
):
    """w[band] per coefficient: w_i = 1 / (M_i^gamma + eps0), M_i the band's mean magnitude."""
    weight = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
    for i in tl.static_range(N_BANDS):
        selected = bands == i
        mean, _ = _band_mean(magnitude, selected)
        weight = tl.where(selected, 1.0 / (_band_power(mean, gamma) + eps0), weight)
    return weight


@triton.jit
def _plane_tables(cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The full DFT matrices (symmetric, zero-padded): [BLOCK_H, BLOCK_H] twice, [BLOCK_W, BLOCK_W] twice."""
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    sq_h = rows[:, None] * BLOCK_H + rows[None, :]
    sq_w = cols[:, None] * BLOCK_W + cols[None, :]
    return (
        tl.load(cos_h_ptr + sq_h),
        tl.load(sin_h_ptr + sq_h),
        tl.load(cos_w_ptr + sq_w),
        tl.load(sin_w_ptr + sq_w),
    )


@triton.jit
def _unnormalised_map(
    x,
    bands,
    ch,
    sh,
    cw,
    sw,
    gamma,
    eps0,
    N_BANDS: tl.constexpr,
    SPECTRAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """F = DFT(x), |F|, w[band], and Y = H W ifft2(w[band] F) (or of w[band]):
    (F re, F im, |F|, w[band], Y). Y is real: G = w[band] F is Hermitian (F is a real plane's
    spectrum and the band map is symmetric under k -> -k), so only Re Y is formed, as the
    streamed and large-plane kernels do; the reference's complex ifft2 differs by an imaginary
    part that is rounding."""
    f_re, f_im = _dft_real(x, ch, sh, cw, sw, PRECISION)
    magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
    weight = _band_weights(magnitude, bands, gamma, eps0, N_BANDS, BLOCK_H, BLOCK_W)
    if SPECTRAL:
        g_re = weight * f_re
        g_im = weight * f_im
    else:
        g_re = weight
        g_im = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
    return f_re, f_im, magnitude, weight, _inverse_real(g_re, g_im, ch, sh, cw, sw, PRECISION)


@triton.jit
def _normalisation(shaped, inv_hw, NORMALIZE: tl.constexpr):
    """(scale, W): the map ``shaped`` (0 outside the plane) over its rms (0) or max (1), a zero
    statistic giving W = 1; or the map itself with scale 1 (2, none)."""
    if NORMALIZE == 2:
        return 1.0, shaped
    if NORMALIZE == 0:
        scale = tl.sqrt(tl.sum(tl.sum(shaped * shaped, axis=1), axis=0) * inv_hw)
    else:
        scale = tl.max(tl.max(shaped, axis=1), axis=0)
    return scale, tl.where(scale > 0, shaped / tl.where(scale > 0, scale, 1.0), 1.0)


@triton.jit
def _normalize_and_inject(
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
    NORMALIZE: tl.constexpr,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
):
    """The one-launch kernels' last stage: normalise the map ``shaped`` (|ifft2| / HW, 0 outside the
    plane; a zero statistic gives W = 1), take z (given, or Philox at ``offset + offs``, stored
    when asked), and store ``out = signal x + noise_scale W z``."""
    _, shaped = _normalisation(shaped, inv_hw, NORMALIZE)
    seed, offset = _seed_offset(rng_ptr, NOISE_GIVEN)
    z = _noise(noise_ptr, noise_out_ptr, seed, offset, offs, inside, NOISE_GIVEN, STORE_NOISE)
    tl.store(out_ptr + offs, x * signal + (shaped * z) * noise_scale, mask=inside)


@triton.jit
def mani_noise_kernel(
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
    H: tl.constexpr,
    W: tl.constexpr,
    signal,
    noise_scale,
    gamma,
    eps0,
    inv_hw,
    N_BANDS: tl.constexpr,
    SPECTRAL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * H * W
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    offs = base + rows[:, None] * W + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)

    ch, sh, cw, sw = _plane_tables(cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, BLOCK_H, BLOCK_W)
    bands = tl.load(band_ptr + rows[:, None] * BLOCK_W + cols[None, :])
    _, _, _, _, y = _unnormalised_map(
        x, bands, ch, sh, cw, sw, gamma, eps0, N_BANDS, SPECTRAL, BLOCK_H, BLOCK_W, PRECISION
    )
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
