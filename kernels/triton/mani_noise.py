"""Fused MANI noise injection for planes up to 32x32: one launch, one program per (image, channel)
plane, the whole plane in one tile (``mani_noise_rows.py`` streams planes up to 64x64). Its stages
are shared with the backward and the streamed kernels.

    F = D_H x D_W (DFT as real matmuls)              |F|, band means M_i over the band map
    w_i = 1 / (M_i^gamma + eps0)                    W = |Re ifft2(w[band] F)|  (or of w[band])
    W normalised (rms / max / none)                 z ~ N(0, 1) (Philox from device seed/offset, or given)
    out = sqrt(abar) x + sqrt(1 - abar) (W z)

Half the W spectrum. x is real, so F[-h, -k] = conj F[h, k]; the band map is symmetric under
k -> -k, so the weights are, and G = w[band] F is Hermitian too. The kernels hold only the W
frequencies 0 .. HALF - 1 (HALF = BLOCK_W / 2, at least tl.dot's 16): every band sum counts a
coefficient with its multiplicity in the whole spectrum (``_half_multiplicity``: 1 at frequency
0 and at W/2, 2 between, 0 past W/2), and the inverse is the real part of the weighted half sum.
An even W = 2 HALF (32) puts its Nyquist frequency W/2 just past the tile: that column is taken
apart (``_dft_nyquist``, ``_inverse_nyquist``), as vectors. The dots are [BLOCK_H x BLOCK_W] by
[BLOCK_W x HALF] and [BLOCK_H x HALF] by [HALF x BLOCK_W]: half the multiply-adds of whole-tile
ones. The launchers pass HALF = BLOCK_W to time the whole width (``triton_mani.HALF_SPECTRUM_W``).

Memory traffic per plane: reads x (and z when given), writes out (and z when it must be kept for
the backward). The band loop is unrolled over ``N_BANDS``.
"""

import triton
import triton.language as tl

from .noise import _noise, _seed_offset


@triton.jit
def _dft_half(x, ch, sh, cw, sw, PRECISION: tl.constexpr):
    """F[:, :HALF] = (C_H - i S_H) x (C_W - i S_W)[:, :HALF] for a real plane: (re, im). The W
    axis first, onto its HALF frequencies (cw, sw: [BLOCK_W, HALF]), so that the H axis' dots are
    half-width too."""
    a = tl.dot(x, cw, input_precision=PRECISION)  # x e^{-i theta}: a - i b
    b = tl.dot(x, sw, input_precision=PRECISION)
    f_re = tl.dot(ch, a, input_precision=PRECISION) - tl.dot(sh, b, input_precision=PRECISION)
    f_im = -(tl.dot(sh, a, input_precision=PRECISION) + tl.dot(ch, b, input_precision=PRECISION))
    return f_re, f_im


@triton.jit
def _dft_nyquist(x, ch, sh, cw_nyquist):
    """F[:, W/2] of a real plane of even W: v = sum_w x[:, w] (-1)^w (cw_nyquist, [BLOCK_W]), then
    the H axis' DFT of v: (re, im), [BLOCK_H]."""
    v = tl.sum(x * cw_nyquist[None, :], axis=1)
    return tl.sum(ch * v[None, :], axis=1), -tl.sum(sh * v[None, :], axis=1)


@triton.jit
def _inverse_half(re, im, ch, sh, cw_t, sw_t, PRECISION: tl.constexpr):
    """Re((C_H + i S_H) (re + i im) (C_W + i S_W)[:HALF, :]): the real part of an unnormalised
    inverse DFT over the HALF W frequencies (cw_t, sw_t: [HALF, BLOCK_W]). The coefficients carry
    their multiplicity, so for a Hermitian spectrum this is the whole inverse (without a Nyquist
    column apart), and it is also the adjoint of ``_dft_half``."""
    p = tl.dot(ch, re, input_precision=PRECISION) - tl.dot(sh, im, input_precision=PRECISION)
    q = tl.dot(sh, re, input_precision=PRECISION) + tl.dot(ch, im, input_precision=PRECISION)
    return tl.dot(p, cw_t, input_precision=PRECISION) - tl.dot(q, sw_t, input_precision=PRECISION)


@triton.jit
def _inverse_nyquist(re, im, ch, sh, cw_nyquist):
    """The Nyquist column's share of ``_inverse_half``: Re((C_H + i S_H) (re + i im)) (-1)^w."""
    q = tl.sum(ch * re[None, :], axis=1) - tl.sum(sh * im[None, :], axis=1)
    return q[:, None] * cw_nyquist[None, :]


@triton.jit
def _half_multiplicity(W: tl.constexpr, HALF: tl.constexpr):
    """[HALF]: W frequency k's multiplicity in the whole spectrum: 1 at 0 and at W/2, 2 between
    (k and -k), 0 past W/2 (a negative frequency, counted at its mirror)."""
    k = tl.arange(0, HALF)
    return tl.where(k == 0, 1.0, tl.where(2 * k < W, 2.0, tl.where(2 * k == W, 1.0, 0.0)))


@triton.jit
def _band_mean(magnitude, selected, multiplicity, magnitude_nyquist, selected_nyquist, NYQUIST: tl.constexpr):
    """The mean of ``magnitude`` over the band's coefficients in the whole spectrum (0 for an empty
    band), and their count: each half-spectrum coefficient counted ``multiplicity`` times, and the
    Nyquist column (with NYQUIST) once."""
    share = tl.where(selected, multiplicity[None, :], 0.0)
    count = tl.sum(tl.sum(share, axis=1), axis=0)
    total = tl.sum(tl.sum(share * magnitude, axis=1), axis=0)
    if NYQUIST:
        count += tl.sum(selected_nyquist.to(tl.float32), axis=0)
        total += tl.sum(tl.where(selected_nyquist, magnitude_nyquist, 0.0), axis=0)
    return total / tl.maximum(count, 1.0), tl.maximum(count, 1.0)


@triton.jit
def _band_power(mean, gamma):
    """M^gamma via exp(gamma log M); an all-zero band has M^gamma = 0, as torch.pow(0, gamma)."""
    return tl.where(mean > 0, tl.exp(gamma * tl.log(tl.where(mean > 0, mean, 1.0))), 0.0)


@triton.jit
def _plane_tables(
    cos_h_ptr,
    sin_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HALF: tl.constexpr,
):
    """The DFT tables (full, symmetric, zero-padded matrices in memory): the H axis' whole
    [BLOCK_H, BLOCK_H] (cos, sin); the W axis' first HALF frequencies as columns [BLOCK_W, HALF]
    and as rows [HALF, BLOCK_W] (cos, sin each); and its frequency HALF's cos row [BLOCK_W]
    ((-1)^w, the Nyquist column's, when W = 2 HALF)."""
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    half = tl.arange(0, HALF)
    sq_h = rows[:, None] * BLOCK_H + rows[None, :]
    by_column = cols[:, None] * BLOCK_W + half[None, :]
    by_row = half[:, None] * BLOCK_W + cols[None, :]
    nyquist = tl.load(cos_w_ptr + (HALF % BLOCK_W) * BLOCK_W + cols)  # row 0 for HALF = BLOCK_W: unused
    return (
        tl.load(cos_h_ptr + sq_h),
        tl.load(sin_h_ptr + sq_h),
        tl.load(cos_w_ptr + by_column),
        tl.load(sin_w_ptr + by_column),
        tl.load(cos_w_ptr + by_row),
        tl.load(sin_w_ptr + by_row),
        nyquist,
    )


@triton.jit
def _plane_bands(band_ptr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, HALF: tl.constexpr):
    """The band map's first HALF columns [BLOCK_H, HALF] and its column HALF [BLOCK_H] (the
    Nyquist column's when W = 2 HALF; padding, band N_BANDS, selects nothing)."""
    rows = tl.arange(0, BLOCK_H)
    half = tl.arange(0, HALF)
    bands = tl.load(band_ptr + rows[:, None] * BLOCK_W + half[None, :])
    return bands, tl.load(band_ptr + rows * BLOCK_W + HALF % BLOCK_W)  # column 0 for HALF = BLOCK_W: unused


@triton.jit
def _unnormalised_map(
    x,
    bands,
    bands_nyquist,
    ch,
    sh,
    cw,
    sw,
    cw_t,
    sw_t,
    cw_nyquist,
    gamma,
    eps0,
    W: tl.constexpr,
    N_BANDS: tl.constexpr,
    SPECTRAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HALF: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """F = DFT(x) on the half spectrum, |F|, w[band], and Y = H W ifft2(w[band] F) (or of
    w[band]): the half spectrum's (F re, F im, |F|, w[band]), the Nyquist column's (the same four;
    zeros unless W = 2 HALF), and Y. Y is real: G = w[band] F is Hermitian, so only Re Y is
    formed, as the streamed and large-plane kernels do; the reference's complex ifft2 differs by an
    imaginary part that is rounding."""
    multiplicity = _half_multiplicity(W, HALF)
    f_re, f_im = _dft_half(x, ch, sh, cw, sw, PRECISION)
    magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
    if W == 2 * HALF:
        fn_re, fn_im = _dft_nyquist(x, ch, sh, cw_nyquist)
    else:
        fn_re = tl.zeros((BLOCK_H,), tl.float32)
        fn_im = tl.zeros((BLOCK_H,), tl.float32)
    magnitude_nyquist = tl.sqrt(fn_re * fn_re + fn_im * fn_im)

    weight = tl.zeros((BLOCK_H, HALF), tl.float32)
    weight_nyquist = tl.zeros((BLOCK_H,), tl.float32)
    for i in tl.static_range(N_BANDS):
        selected = bands == i
        selected_nyquist = bands_nyquist == i
        mean, _ = _band_mean(
            magnitude, selected, multiplicity, magnitude_nyquist, selected_nyquist, W == 2 * HALF
        )
        w_i = 1.0 / (_band_power(mean, gamma) + eps0)
        weight = tl.where(selected, w_i, weight)
        weight_nyquist = tl.where(selected_nyquist, w_i, weight_nyquist)

    if SPECTRAL:
        g_re = weight * f_re
        g_im = weight * f_im
        gn_re = weight_nyquist * fn_re
        gn_im = weight_nyquist * fn_im
    else:
        g_re = weight
        g_im = tl.zeros((BLOCK_H, HALF), tl.float32)
        gn_re = weight_nyquist
        gn_im = tl.zeros((BLOCK_H,), tl.float32)
    y = _inverse_half(
        g_re * multiplicity[None, :], g_im * multiplicity[None, :], ch, sh, cw_t, sw_t, PRECISION
    )
    if W == 2 * HALF:
        y += _inverse_nyquist(gn_re, gn_im, ch, sh, cw_nyquist)
    return f_re, f_im, magnitude, weight, fn_re, fn_im, magnitude_nyquist, weight_nyquist, y


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
    HALF: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * H * W
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    offs = base + rows[:, None] * W + cols[None, :]
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)

    ch, sh, cw, sw, cw_t, sw_t, cw_nyquist = _plane_tables(
        cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, BLOCK_H, BLOCK_W, HALF
    )
    bands, bands_nyquist = _plane_bands(band_ptr, BLOCK_H, BLOCK_W, HALF)
    _, _, _, _, _, _, _, _, y = _unnormalised_map(
        x, bands, bands_nyquist, ch, sh, cw, sw, cw_t, sw_t, cw_nyquist, gamma, eps0,
        W, N_BANDS, SPECTRAL, BLOCK_H, HALF, PRECISION,
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
