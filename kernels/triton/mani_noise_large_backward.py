"""The backward of MANI noise injection for planes larger than 64x64 (``mani_noise_large.py``):
cuFFT for the transforms, and two fused Triton kernels between them.

With ``g_map = sqrt(1 - abar) grad z`` and N = H W, the gradients are those of the whole-plane
kernels (``mani_noise_backward.py``), over half spectra:

1. Recompute the forward: ``F = rfft2(x)``; ``mani_band_weights_kernel`` (the forward's), writing
   ``G = w[band] F`` beside F and storing each plane's band means and weights; ``Y = irfft2(G)``.
2. ``mani_map_gradient_kernel``, one program per plane, three sweeps of Y: the normalisation
   statistic; the noise's gradient ``g_z = sqrt(1 - abar) W grad`` and the inner product
   ``<g_map, |Y|>`` (and, for max, the count of maxima); then ``g_Y / N``, where
   ``g_Y = g_S sign(Y)`` and g_S is the normalisation's gradient.
3. ``g_G = rfft2(g_Y / N)``: g_Y is real, so g_G is Hermitian and its half spectrum is enough.
4. ``mani_spectrum_gradient_kernel``, one program per plane, two sweeps: the band sums of
   ``Re(g_G conj F)`` ("spectral") or ``Re(g_G)`` ("kernel"), weighted by the forward's shares
   (the conjugate mirror of a coefficient has the same band and the same term), so that
   ``mean_grad_b = dw_b/dM_b * sum_b / count_b``; then ``g_F = w[band] g_G`` (spectral only)
   ``+ mean_grad_b F / |F|``, written over g_G. g_F is Hermitian too.
5. ``g_x = sqrt(abar) grad + N irfft2(g_F)`` (``norm="forward"``: the unnormalised sum).

Eight launches, where autograd through the reference ran 86 top-level torch ops (profiled on
the CPU at 2x3x256^2, forward and backward; two of them ``.item()`` host syncs), and
half-spectrum transforms where the reference's are full complex ones.
"""

import triton
import triton.language as tl

from .mani_noise_large import _map_scale


@triton.jit
def mani_map_gradient_kernel(
    grad_ptr,
    noise_ptr,
    shaped_ptr,
    g_shaped_ptr,
    g_noise_ptr,
    N_PIXELS: tl.constexpr,
    noise_scale,
    inv_n,
    NORMALIZE: tl.constexpr,
    NOISE_GRAD: tl.constexpr,
    DETACH_MAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """shaped: Y = irfft2(G), ``[planes, N_PIXELS]``. Writes g_noise (when NOISE_GRAD) and, unless
    DETACH_MAP, ``g_shaped = g_Y / N``. NORMALIZE: 0 rms, 1 max, 2 none. torch's derivatives are
    zero where Y = 0 (|.|) and on a plane whose map is zero everywhere (W = 1 there); amax shares
    its gradient between tied maxima."""
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * N_PIXELS

    scale = _map_scale(shaped_ptr, base, N_PIXELS, inv_n, NORMALIZE, BLOCK)
    live = scale > 0
    safe_scale = tl.where(live, scale, 1.0)

    dot = tl.zeros((BLOCK,), tl.float32)
    at_max = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, N_PIXELS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_PIXELS
        offs = base + idx
        s = tl.abs(tl.load(shaped_ptr + offs, mask=inside, other=0.0))
        g = tl.load(grad_ptr + offs, mask=inside, other=0.0)
        if NOISE_GRAD:
            weight = s
            if NORMALIZE != 2:
                weight = tl.where(live, s / safe_scale, 1.0)
            tl.store(g_noise_ptr + offs, noise_scale * weight * g, mask=inside)
        if not DETACH_MAP:
            z = tl.load(noise_ptr + offs, mask=inside, other=0.0)
            dot += noise_scale * g * z * s
            if NORMALIZE == 1:
                at_max += tl.where(inside & (s == scale), 1.0, 0.0)

    if not DETACH_MAP:
        total = tl.sum(dot, axis=0)
        n_max = tl.maximum(tl.sum(at_max, axis=0), 1.0)
        for start in range(0, N_PIXELS, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            inside = idx < N_PIXELS
            offs = base + idx
            y = tl.load(shaped_ptr + offs, mask=inside, other=0.0)
            s = tl.abs(y)
            g_map = noise_scale * tl.load(grad_ptr + offs, mask=inside, other=0.0)
            g_map = g_map * tl.load(noise_ptr + offs, mask=inside, other=0.0)
            g_s = g_map
            if NORMALIZE == 0:
                g_s = tl.where(
                    live, (g_map - s * (total * inv_n / (safe_scale * safe_scale))) / safe_scale, 0.0
                )
            elif NORMALIZE == 1:
                tie = tl.where(s == scale, total / (safe_scale * safe_scale * n_max), 0.0)
                g_s = tl.where(live, g_map / safe_scale - tie, 0.0)
            g_y = tl.where(y > 0, g_s, tl.where(y < 0, -g_s, 0.0))
            tl.store(g_shaped_ptr + offs, g_y * inv_n, mask=inside)


@triton.jit
def mani_spectrum_gradient_kernel(
    g_spectrum_ptr,
    spectrum_ptr,
    stats_ptr,
    band_ptr,
    share_ptr,
    N_COEFFICIENTS: tl.constexpr,
    gamma,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    SPECTRAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """g_spectrum: float32 view of g_G's half spectra, ``[planes, N_COEFFICIENTS, 2]``,
    overwritten with g_F. spectrum: F's, the same shape. stats: ``mani_band_weights_kernel``'s
    ``[planes, 2, BANDS_PAD]`` means and weights. band and share as there."""
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * N_COEFFICIENTS * 2
    band_ids = tl.arange(0, BANDS_PAD)
    means = tl.load(stats_ptr + plane * 2 * BANDS_PAD + band_ids)
    weights = tl.load(stats_ptr + plane * 2 * BANDS_PAD + BANDS_PAD + band_ids)

    sums = tl.zeros((BANDS_PAD,), tl.float32)
    for start in range(0, N_COEFFICIENTS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_COEFFICIENTS
        g_re = tl.load(g_spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
        band = tl.load(band_ptr + idx, mask=inside, other=N_BANDS)
        share = tl.load(share_ptr + idx, mask=inside, other=0.0)
        term = g_re
        if SPECTRAL:
            g_im = tl.load(g_spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
            f_re = tl.load(spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
            f_im = tl.load(spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
            term = g_re * f_re + g_im * f_im
        value = term * share
        for i in tl.static_range(N_BANDS):
            sums += tl.where(band_ids == i, tl.sum(tl.where(band == i, value, 0.0), axis=0), 0.0)

    # dw/dM = -gamma M^(gamma-1) w^2, zero at M = 0 (torch's pow gives 0 there for gamma > 1); the
    # shares already divide by the band's size.
    positive = means > 0
    slope = tl.where(
        positive,
        -gamma * tl.exp((gamma - 1.0) * tl.log(tl.where(positive, means, 1.0))) * weights * weights,
        0.0,
    )
    mean_grads = slope * sums

    for start in range(0, N_COEFFICIENTS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_COEFFICIENTS
        band = tl.load(band_ptr + idx, mask=inside, other=N_BANDS)
        mean_grad = tl.zeros((BLOCK,), tl.float32)
        weight = tl.zeros((BLOCK,), tl.float32)
        for i in tl.static_range(N_BANDS):
            mean_grad = tl.where(
                band == i, tl.sum(tl.where(band_ids == i, mean_grads, 0.0), axis=0), mean_grad
            )
            weight = tl.where(band == i, tl.sum(tl.where(band_ids == i, weights, 0.0), axis=0), weight)
        f_re = tl.load(spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
        f_im = tl.load(spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
        magnitude = tl.sqrt(f_re * f_re + f_im * f_im)
        unit = tl.where(magnitude > 0, mean_grad / tl.where(magnitude > 0, magnitude, 1.0), 0.0)
        out_re = unit * f_re
        out_im = unit * f_im
        if SPECTRAL:
            out_re += weight * tl.load(g_spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
            out_im += weight * tl.load(g_spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
        tl.store(g_spectrum_ptr + base + 2 * idx, out_re, mask=inside)
        tl.store(g_spectrum_ptr + base + 2 * idx + 1, out_im, mask=inside)
