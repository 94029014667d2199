"""Fused backward of ``mani_noise`` for planes from 33 to 64 on a side, streamed like its forward
(``mani_noise_rows.py``): one launch, one program per plane, frequency rows in blocks of
``BLOCK_M``. It computes what ``mani_noise_backward.py`` computes for whole tiles:

    pass 1   M_b, w_b = 1 / (M_b^gamma + eps0)              (the forward's band means)
    pass 2   Y = Re ifft2(G) * HW                            (the forward's weighted inverse)
    tile     S = |Y| / HW, W = S normalised;  g_z = sqrt(1-abar) W grad
             g_W = sqrt(1-abar) grad z;  g_S through the normalisation;  g_Y = g_S sign(Y) / HW
    pass 3   g_G[m] = DFT(g_Y) rows;  g_w_b = sum over band b of Re(g_G conj(F)) (or Re g_G)
             c_b = -gamma M_b^(gamma-1) w_b^2 g_w_b / count_b
    pass 4   g_x += Re(D_H^* g_F D_W^*) over row blocks, g_F = c[band] F / |F| + w[band] g_G
             (spectral), each term in its own sweep
    g_x = sqrt(abar) grad + g_x

Y is real (G is Hermitian; see ``mani_noise_rows.py``), so ``|Y|``'s derivative is ``sign(Y)`` and
``g_Y`` is a real plane, whose DFT rows ``_spectrum_rows`` computes. F and g_G are recomputed per
row block rather than kept. Zero where torch's derivative is zero: ``|.|`` and ``F/|F|`` at 0, a
zero band mean (gamma > 1), a plane whose map is constant (scale 0). ``DETACH_MAP`` keeps only the
direct term. Memory traffic per plane: reads x, z and grad, writes g_x (and g_z).
"""

import triton
import triton.language as tl

from .mani_noise import _normalisation
from .mani_noise_backward import _normalisation_backward
from .mani_noise_rows import (
    _accumulate_inverse_rows,
    _add_band_sums,
    _band_rows,
    _gather_bands,
    _plane_setup,
    _spectrum_rows,
    _streamed_map,
)


@triton.jit
def mani_noise_rows_backward_kernel(
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
    DETACH_MAP: tl.constexpr,
    NOISE_GRAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Tables as ``mani_noise_rows_kernel``'s. Writes g_x and, with ``NOISE_GRAD``, g_z."""
    offs, inside, x, cw, sw = _plane_setup(x_ptr, cos_w_ptr, sin_w_ptr, H, W, BLOCK_H, BLOCK_W)
    grad = tl.load(grad_ptr + offs, mask=inside, other=0.0)

    # ---- recompute the forward ------------------------------------------------------------------
    means, weights, y = _streamed_map(
        x, cos_h_ptr, sin_h_ptr, cw, sw, band_ptr, inv_count_ptr, gamma, eps0, N_BANDS, BANDS_PAD, SPECTRAL,
        BLOCK_H, BLOCK_W, BLOCK_M, PRECISION,
    )  # fmt: skip
    shaped = tl.where(inside, tl.abs(y) * inv_hw, 0.0)
    scale, normalised = _normalisation(shaped, inv_hw, NORMALIZE)
    if NOISE_GRAD:
        tl.store(g_noise_ptr + offs, noise_scale * normalised * grad, mask=inside)

    g_x = signal * grad
    if not DETACH_MAP:
        # ---- through the normalisation and |Y| ---------------------------------------------------
        z = tl.load(noise_ptr + offs, mask=inside, other=0.0)
        g_shaped = _normalisation_backward(
            tl.where(inside, noise_scale * grad * z, 0.0), shaped, scale, inside, inv_hw, NORMALIZE
        )
        # S = |Y| / HW, so g_Y = g_S sign(Y) / HW; Y is unnormalised, so g_G = DFT(g_Y) exactly.
        g_y = tl.where(y > 0, g_shaped, tl.where(y < 0, -g_shaped, 0.0)) * inv_hw

        # ---- pass 3: the band weights' gradients -------------------------------------------------
        g_weight_sums = tl.zeros((BANDS_PAD,), tl.float32)
        for row0 in range(0, BLOCK_H, BLOCK_M):
            gg_re, gg_im = _spectrum_rows(
                g_y, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
            )
            if SPECTRAL:
                f_re, f_im = _spectrum_rows(
                    x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
                )
                g_weight = gg_re * f_re + gg_im * f_im
            else:
                g_weight = gg_re
            g_weight_sums = _add_band_sums(
                g_weight_sums, g_weight, _band_rows(band_ptr, row0, BLOCK_W, BLOCK_M), N_BANDS, BANDS_PAD
            )
        # d w / d M = -gamma M^(gamma-1) w^2; torch's pow gives 0 at M = 0 for gamma > 1. Each
        # coefficient's |F| gets its band's share, g_M_b / count_b.
        log_means = tl.log(tl.where(means > 0, means, 1.0))
        slope = tl.where(means > 0, -gamma * tl.exp((gamma - 1.0) * log_means) * weights * weights, 0.0)
        g_abs_by_band = slope * g_weight_sums * tl.load(inv_count_ptr + tl.arange(0, BANDS_PAD))

        # ---- pass 4: g_F, and its adjoint DFT into g_x ---------------------------------------------
        # The direct term w[band] g_G and the magnitudes' term c[band] F / |F| are summed in two
        # sweeps, so that one sweep holds one spectrum block (the sm_90 compile spills heavily
        # when both are live).
        g_map_x = tl.zeros((BLOCK_H, BLOCK_W), tl.float32)
        for row0 in range(0, BLOCK_H, BLOCK_M):
            bands = _band_rows(band_ptr, row0, BLOCK_W, BLOCK_M)
            f_re, f_im = _spectrum_rows(
                x, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
            )
            magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
            live = magnitude > 0
            g_abs = tl.where(live, _gather_bands(g_abs_by_band, bands, N_BANDS, BANDS_PAD), 0.0)
            g_abs = g_abs / tl.where(live, magnitude, 1.0)
            g_map_x = _accumulate_inverse_rows(
                g_map_x,
                g_abs * f_re,
                g_abs * f_im,
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
        if SPECTRAL:
            for row0 in range(0, BLOCK_H, BLOCK_M):
                weight = _gather_bands(
                    weights, _band_rows(band_ptr, row0, BLOCK_W, BLOCK_M), N_BANDS, BANDS_PAD
                )
                gg_re, gg_im = _spectrum_rows(
                    g_y, row0, cos_h_ptr, sin_h_ptr, cw, sw, BLOCK_H, BLOCK_W, BLOCK_M, PRECISION
                )
                g_map_x = _accumulate_inverse_rows(
                    g_map_x,
                    weight * gg_re,
                    weight * gg_im,
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
        g_x += g_map_x
    tl.store(g_x_ptr + offs, g_x, mask=inside)
