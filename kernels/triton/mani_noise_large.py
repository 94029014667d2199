"""MANI noise injection for planes larger than 64x64: cuFFT for the two transforms, and two
fused Triton kernels for everything between and after them.

A 256x256 complex spectrum (512 KB) does not fit one program, and a full DFT-as-GEMM of it is
wasteful, so the transforms stay with cuFFT (``torch.fft``; pocketfft on the CPU). The input is
real, so both are half-spectrum transforms. Per round, the launches are:

1. ``F = rfft2(x)``, the ``H x (W//2 + 1)`` half spectrum.
2. ``mani_band_weights_kernel``, one program per plane, two sweeps of F:
   the band means ``M_i`` (each half-spectrum coefficient counts for itself and, off the
   self-mirrored columns, for its conjugate mirror, which has the same band), the weights
   ``w_i = 1 / (M_i^gamma + eps0)``, then ``G = w[band] F`` (or ``w[band]``) in place.
3. ``Y = irfft2(G)``. G is Hermitian (the band map is symmetric under k -> -k), so Y is real and
   equals ``ifft2`` of the full spectrum.
4. ``mani_inject_kernel``, one program per plane, two sweeps of Y: the normalisation statistic,
   then ``out = sqrt(abar) x + sqrt(1 - abar) (|Y| / s) z`` with z given or drawn from Philox at
   the same counters as the one-launch kernel (``offset + plane * H * W + pixel``).

The second sweep of each kernel re-reads a plane its own program has just read (256 KB at 256^2),
mostly from L2. Traffic per pixel is about 44 bytes against the 8 of an ideal single pass (read
x, write out), where the plain PyTorch path moves well over 100 in about 20 launches.
"""

import triton
import triton.language as tl

from .noise import _noise, _seed_offset


@triton.jit
def mani_band_weights_kernel(
    spectrum_ptr,
    weighted_ptr,
    stats_ptr,
    band_ptr,
    share_ptr,
    N_COEFFICIENTS: tl.constexpr,
    gamma,
    eps0,
    N_BANDS: tl.constexpr,
    BANDS_PAD: tl.constexpr,
    SPECTRAL: tl.constexpr,
    STORE_STATS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """spectrum: float32 view of the complex half spectra F, ``[planes, N_COEFFICIENTS, 2]``.
    weighted: where G goes, of the same shape (the forward passes the spectrum itself: each
    element is read before it is written, by the same program). band: int32 band of each
    half-spectrum coefficient. share: its multiplicity (1 or 2) over its band's size in the full
    spectrum, so that the band mean is ``sum(share * |F|)``. With STORE_STATS (the backward),
    ``stats[plane] = [means (BANDS_PAD), weights (BANDS_PAD)]``."""
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * N_COEFFICIENTS * 2
    band_ids = tl.arange(0, BANDS_PAD)

    sums = tl.zeros((BANDS_PAD,), tl.float32)
    for start in range(0, N_COEFFICIENTS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_COEFFICIENTS
        re = tl.load(spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
        im = tl.load(spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
        band = tl.load(band_ptr + idx, mask=inside, other=N_BANDS)
        share = tl.load(share_ptr + idx, mask=inside, other=0.0)
        value = tl.sqrt(re * re + im * im) * share
        # One 1-D reduction per band (unrolled) rather than a [BLOCK, BANDS_PAD] one, which would
        # hold BANDS_PAD times the tile in registers.
        for i in tl.static_range(N_BANDS):
            sums += tl.where(band_ids == i, tl.sum(tl.where(band == i, value, 0.0), axis=0), 0.0)

    # M^gamma via exp(gamma log M); an all-zero band has M^gamma = 0, as torch.pow(0, gamma).
    power = tl.where(sums > 0, tl.exp(gamma * tl.log(tl.where(sums > 0, sums, 1.0))), 0.0)
    weights = 1.0 / (power + eps0)
    if STORE_STATS:
        tl.store(stats_ptr + plane * 2 * BANDS_PAD + band_ids, sums)
        tl.store(stats_ptr + plane * 2 * BANDS_PAD + BANDS_PAD + band_ids, weights)

    for start in range(0, N_COEFFICIENTS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_COEFFICIENTS
        band = tl.load(band_ptr + idx, mask=inside, other=N_BANDS)
        weight = tl.zeros((BLOCK,), tl.float32)
        for i in tl.static_range(N_BANDS):
            weight = tl.where(band == i, tl.sum(tl.where(band_ids == i, weights, 0.0), axis=0), weight)
        if SPECTRAL:
            re = tl.load(spectrum_ptr + base + 2 * idx, mask=inside, other=0.0)
            im = tl.load(spectrum_ptr + base + 2 * idx + 1, mask=inside, other=0.0)
            tl.store(weighted_ptr + base + 2 * idx, re * weight, mask=inside)
            tl.store(weighted_ptr + base + 2 * idx + 1, im * weight, mask=inside)
        else:
            tl.store(weighted_ptr + base + 2 * idx, weight, mask=inside)
            tl.store(weighted_ptr + base + 2 * idx + 1, tl.zeros((BLOCK,), tl.float32), mask=inside)


@triton.jit
def _map_scale(shaped_ptr, base, N_PIXELS: tl.constexpr, inv_n, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """The normalisation statistic of the map |Y| of the plane at ``base``: its RMS (NORMALIZE 0),
    its max (1), or 1 (2, none). The injection and its backward share it, so the backward's scale
    is the forward's bit for bit (``max``'s tie test compares against it)."""
    scale = 1.0
    if NORMALIZE == 0:
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, N_PIXELS, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            y = tl.load(shaped_ptr + base + idx, mask=idx < N_PIXELS, other=0.0)
            acc += y * y
        scale = tl.sqrt(tl.sum(acc, axis=0) * inv_n)
    elif NORMALIZE == 1:
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, N_PIXELS, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            y = tl.load(shaped_ptr + base + idx, mask=idx < N_PIXELS, other=0.0)
            acc = tl.maximum(acc, tl.abs(y))
        scale = tl.max(acc, axis=0)
    return scale


@triton.jit
def mani_inject_kernel(
    x_ptr,
    shaped_ptr,
    noise_ptr,
    out_ptr,
    noise_out_ptr,
    rng_ptr,
    N_PIXELS: tl.constexpr,
    signal,
    noise_scale,
    inv_n,
    NORMALIZE: tl.constexpr,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """shaped: Y = irfft2(G), ``[planes, N_PIXELS]``. NORMALIZE: 0 rms, 1 max, 2 none. A plane
    whose map is zero everywhere gets W = 1 under rms and max (the reference's rule)."""
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * N_PIXELS

    scale = _map_scale(shaped_ptr, base, N_PIXELS, inv_n, NORMALIZE, BLOCK)

    seed, offset = _seed_offset(rng_ptr, NOISE_GIVEN)
    for start in range(0, N_PIXELS, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < N_PIXELS
        offs = base + idx
        weight = tl.abs(tl.load(shaped_ptr + offs, mask=inside, other=0.0))
        if NORMALIZE != 2:
            weight = tl.where(scale > 0, weight / tl.where(scale > 0, scale, 1.0), 1.0)
        x = tl.load(x_ptr + offs, mask=inside, other=0.0)
        z = _noise(noise_ptr, noise_out_ptr, seed, offset, offs, inside, NOISE_GIVEN, STORE_NOISE)
        tl.store(out_ptr + offs, x * signal + (weight * z) * noise_scale, mask=inside)
