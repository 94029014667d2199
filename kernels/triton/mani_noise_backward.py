"""Fused backward of ``mani_noise`` for planes up to 32x32 (``mani_noise_rows_backward.py`` takes
planes up to 64x64): the gradients of ``out = sqrt(abar) x + sqrt(1 - abar) (W z)`` with respect
to x (through the intensity map W, as autograd through ``reference.mani_noise`` computes it) and
to z, in one launch, one program per plane, the whole plane in one tile.

Recompute (no activations are saved): F = DFT(x), |F|, band means M_b, weights w_b, G = w[band] F
(or w[band]), Y = Re ifft2(G) (G is Hermitian, so Y is real; see ``mani_noise.py``), S = |Y|,
W = S normalised. Then, backwards (on half the W spectrum, as the forward: g_G is a real plane's
DFT and g_F is Hermitian too, so band sums count multiplicities and the inverse is the weighted
half sum):

    g_W = sqrt(1-abar) grad z                        g_z = sqrt(1-abar) W grad
    g_S: rms  (g_W - S <g_W, S> / (N s^2)) / s       max  g_W / m - [S = m] <g_W, S> / (m^2 #max)
    g_Y = g_S sign(Y)                                 g_G = fft2(g_Y) / (H W)
    g_w[k] = Re(g_G conj(F)) (spectral) or Re(g_G)   g_M_b = -gamma M_b^(gamma-1) w_b^2 sum_b g_w
    g_F = w[band] g_G (spectral) + (g_M_b / count_b) F / |F|
    g_x = sqrt(abar) grad + Re(sum_k e^{+i theta n} g_F[k])

Zero where torch's derivative is zero: |.| and F/|F| at 0, a zero band mean (gamma > 1), a plane
whose map is constant (scale 0: W = 1). ``DETACH_MAP`` keeps only the direct term, like the
reference's ``detach_map=True``. Memory traffic per plane: reads x, z and grad, writes g_x (and g_z).
"""

import triton
import triton.language as tl

from .mani_noise import (
    _band_mean,
    _band_power,
    _dft_half,
    _dft_nyquist,
    _half_multiplicity,
    _inverse_half,
    _inverse_nyquist,
    _normalisation,
    _plane_bands,
    _plane_tables,
    _unnormalised_map,
)


@triton.jit
def _normalisation_backward(g_map, shaped, scale, inside, inv_hw, NORMALIZE: tl.constexpr):
    """g_S from g_W through ``_normalisation`` (rms: (g - S <g, S> / (N s^2)) / s; max: the
    tie-sharing amax rule torch uses; none: g); zero when s = 0 (W = 1)."""
    if NORMALIZE == 2:  # none
        return g_map
    safe_scale = tl.where(scale > 0, scale, 1.0)
    dot = tl.sum(tl.sum(g_map * shaped, axis=1), axis=0)
    if NORMALIZE == 0:  # rms
        g_shaped = (g_map - shaped * (dot * inv_hw / (safe_scale * safe_scale))) / safe_scale
    else:  # amax shares its gradient evenly between tied maxima, as torch's does
        at_max = inside & (shaped == scale)
        n_max = tl.maximum(tl.sum(tl.sum(at_max.to(tl.float32), axis=1), axis=0), 1.0)
        g_shaped = g_map / safe_scale - tl.where(at_max, dot / (safe_scale * safe_scale * n_max), 0.0)
    return tl.where(scale > 0, tl.where(inside, g_shaped, 0.0), 0.0)


@triton.jit
def _spectrum_gradient(g_abs, f_re, f_im, magnitude, weight, gg_re, gg_im, SPECTRAL: tl.constexpr):
    """g_F = (g_M_b / count_b) F / |F| (zero where F = 0) + w[band] g_G (spectral), per coefficient:
    of the half-spectrum tile or of the Nyquist column alike."""
    live = magnitude > 0
    safe = tl.where(live, magnitude, 1.0)
    gf_re = tl.where(live, g_abs * f_re / safe, 0.0)
    gf_im = tl.where(live, g_abs * f_im / safe, 0.0)
    if SPECTRAL:
        gf_re += weight * gg_re
        gf_im += weight * gg_im
    return gf_re, gf_im


@triton.jit
def mani_noise_backward_kernel(
    grad_ptr,
    x_ptr,
    noise_ptr,
    g_x_ptr,
    g_noise_ptr,
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
    DETACH_MAP: tl.constexpr,
    NOISE_GRAD: tl.constexpr,
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
    z = tl.load(noise_ptr + offs, mask=inside, other=0.0)
    grad = tl.load(grad_ptr + offs, mask=inside, other=0.0)

    ch, sh, cw, sw, cw_t, sw_t, cw_nyquist = _plane_tables(
        cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, BLOCK_H, BLOCK_W, HALF
    )

    # ---- recompute the forward ------------------------------------------------------------------
    bands, bands_nyquist = _plane_bands(band_ptr, BLOCK_H, BLOCK_W, HALF)
    f_re, f_im, magnitude, weight, fn_re, fn_im, magnitude_nyquist, weight_nyquist, y = _unnormalised_map(
        x, bands, bands_nyquist, ch, sh, cw, sw, cw_t, sw_t, cw_nyquist, gamma, eps0,
        W, N_BANDS, SPECTRAL, BLOCK_H, HALF, PRECISION,
    )  # fmt: skip
    shaped = tl.where(inside, tl.abs(y) * inv_hw, 0.0)
    scale, normalised = _normalisation(shaped, inv_hw, NORMALIZE)

    if NOISE_GRAD:
        tl.store(g_noise_ptr + offs, noise_scale * normalised * grad, mask=inside)
    g_x = signal * grad
    if not DETACH_MAP:
        # ---- through the normalisation and |Y| ---------------------------------------------------
        g_shaped = _normalisation_backward(
            tl.where(inside, noise_scale * grad * z, 0.0), shaped, scale, inside, inv_hw, NORMALIZE
        )
        # S = |Y| / HW with Y real, so g_Y = g_S sign(Y) / HW (a real plane), and g_G = DFT(g_Y).
        g_y = tl.where(y > 0, g_shaped, tl.where(y < 0, -g_shaped, 0.0)) * inv_hw
        gg_re, gg_im = _dft_half(g_y, ch, sh, cw, sw, PRECISION)
        if W == 2 * HALF:
            ggn_re, ggn_im = _dft_nyquist(g_y, ch, sh, cw_nyquist)
        else:
            ggn_re = tl.zeros((BLOCK_H,), tl.float32)
            ggn_im = tl.zeros((BLOCK_H,), tl.float32)

        # ---- through the band weights and means ---------------------------------------------------
        if SPECTRAL:
            g_weight = gg_re * f_re + gg_im * f_im
            g_weight_nyquist = ggn_re * fn_re + ggn_im * fn_im
        else:
            g_weight = gg_re
            g_weight_nyquist = ggn_re
        multiplicity = _half_multiplicity(W, HALF)
        g_abs = tl.zeros((BLOCK_H, HALF), tl.float32)
        g_abs_nyquist = tl.zeros((BLOCK_H,), tl.float32)
        for i in tl.static_range(N_BANDS):
            selected = bands == i
            selected_nyquist = bands_nyquist == i
            mean, count = _band_mean(
                magnitude, selected, multiplicity, magnitude_nyquist, selected_nyquist, W == 2 * HALF
            )
            log_mean = tl.log(tl.where(mean > 0, mean, 1.0))
            w_i = 1.0 / (_band_power(mean, gamma) + eps0)
            # d w / d M = -gamma M^(gamma-1) w^2; torch's pow gives 0 at M = 0 for gamma > 1. The
            # band's sum of g_weight over the whole spectrum, each coefficient with its multiplicity.
            slope = tl.where(mean > 0, -gamma * tl.exp((gamma - 1.0) * log_mean) * w_i * w_i, 0.0)
            band_sum = tl.sum(
                tl.sum(tl.where(selected, g_weight * multiplicity[None, :], 0.0), axis=1), axis=0
            )
            if W == 2 * HALF:
                band_sum += tl.sum(tl.where(selected_nyquist, g_weight_nyquist, 0.0), axis=0)
            g_mean = slope * band_sum
            g_abs = tl.where(selected, g_mean / count, g_abs)
            g_abs_nyquist = tl.where(selected_nyquist, g_mean / count, g_abs_nyquist)
        gf_re, gf_im = _spectrum_gradient(g_abs, f_re, f_im, magnitude, weight, gg_re, gg_im, SPECTRAL)
        g_x += _inverse_half(
            gf_re * multiplicity[None, :], gf_im * multiplicity[None, :], ch, sh, cw_t, sw_t, PRECISION
        )
        if W == 2 * HALF:
            gfn_re, gfn_im = _spectrum_gradient(
                g_abs_nyquist, fn_re, fn_im, magnitude_nyquist, weight_nyquist, ggn_re, ggn_im, SPECTRAL
            )
            g_x += _inverse_nyquist(gfn_re, gfn_im, ch, sh, cw_nyquist)
    tl.store(g_x_ptr + offs, g_x, mask=inside)
