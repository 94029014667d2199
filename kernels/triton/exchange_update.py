"""Fused reverse step after the model call: x0 prediction, reference x0, frequency exchange
(band-only DFT), abs/real reconstruction, clipping and the DDIM/DDPM update, in one launch.

One program per (image, channel) plane, streaming ``BLOCK_M`` rows at a time, in two passes:

pass 1: read x_t, eps, ref_t (and eps_ref) rows; x0 and x_ref0; pixel scale; accumulate the
        band spectra ``F = D_band_H . p . D_band_W^T`` of both (thin DFT matrices, ``tl.dot``).
mix:    in band space, amplitude from the reference inside the amplitude disc, phase from it
        inside the phase disc (or x0's phase projected to within delta, wrap-around handled with
        phasors, no atan2): ``Delta = F_out - F_x0``, zero outside the discs.
pass 2: re-read x_t, eps rows; ``ifft2(F_out) = p_x0 + ifft2(Delta)`` with the band-only inverse;
        abs or real; clip; back to [-1, 1]; ``x_next = s_next x0 + c1 z + c2 eps``; write.

With ``HALF_BAND_W`` the W band holds only its non-negative frequencies. Both pixel images are
real, so their spectra are Hermitian, and so is ``Delta`` (the discs are symmetric and the mix
commutes with conjugation, but for "project" at exact phase opposition; see
``triton_exchange.uses_half_band_w``): the negative W frequencies are the conjugates of their mirrors. Pass 1
then forms half the band columns, the mix runs on half the band, and pass 2 takes the real part of
the inverse of ``weight * Delta`` (weight 1 at frequency 0, else 2): ``y`` is real, so "abs" is
``|y|``. That halves the band-space dots and quarters the inverse row dots; the launcher takes the
whole band where a Nyquist frequency is in it (``triton_exchange.uses_half_band_w``).

Plane sizes are compile-time constants: one specialisation per shape (the sampler captures one
graph per shape anyway), and the row loops have static bounds.

Both passes walk each block of rows in chunks of ``BLOCK_K`` columns (32 at most). The fp32
``ieee`` dots are FMA loops that hold a whole K extent per thread. Whole 256-wide rows made the
row transform a K = 256 dot, and the sm_90 compile of the 256x256 kernel spilled 4.5 KB per
thread; in chunks it spills nothing (bench/compile_sm90.py). Each row block re-reads its chunks
of the W twiddles (64 KB in all at 256x256) from L1/L2 instead of holding them in registers.

Memory traffic per plane: reads 4 planes in pass 1 (3 with reference="input") and 2 (3 with an
explicit noise tensor) in pass 2, writes 1. ``tl.dot`` uses ``PRECISION`` ("ieee" for parity on
the GPU; the interpreter computes exactly).
"""

import triton
import triton.language as tl

from .noise import _noise, _seed_offset


@triton.jit
def _to_pixels(x):
    """[-1, 1] -> [0, 255]: clip(clamp(x / 2 + 0.5, 0, 1) * 255, 0, 255)."""
    v = tl.minimum(tl.maximum(x / 2 + 0.5, 0.0), 1.0) * 255
    return tl.minimum(tl.maximum(v, 0.0), 255.0)


@triton.jit
def _unit_phasor(re, im):
    """F / |F|, with angle(0) = 0 as torch defines it (phasor (1, 0))."""
    mag = tl.sqrt(re * re + im * im)
    safe = tl.where(mag > 0, mag, 1.0)
    return tl.where(mag > 0, re / safe, 1.0), tl.where(mag > 0, im / safe, 0.0), mag


@triton.jit
def _chunk(base, rows, k0, H: tl.constexpr, W: tl.constexpr, BLOCK_K: tl.constexpr):
    """Columns ``k0 .. k0 + BLOCK_K`` of the row block ``rows``: (cols, inside mask, element offsets)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    return cols, inside, base + rows[:, None] * W + cols[None, :]


@triton.jit
def _band_columns(cos_w_ptr, sin_w_ptr, cols, BLOCK_W: tl.constexpr, BAND_W: tl.constexpr):
    """Columns ``cols`` of the band DFT rows along W: (cos, sin), each [BAND_W, len(cols)]."""
    offs = tl.arange(0, BAND_W)[:, None] * BLOCK_W + cols[None, :]
    return tl.load(cos_w_ptr + offs), tl.load(sin_w_ptr + offs)


@triton.jit
def _band_columns_t(cos_w_ptr, sin_w_ptr, cols, BLOCK_W: tl.constexpr, BAND_W: tl.constexpr):
    """The same columns, transposed for the row transform: (cos, sin), each [len(cols), BAND_W]."""
    offs = tl.arange(0, BAND_W)[None, :] * BLOCK_W + cols[:, None]
    return tl.load(cos_w_ptr + offs), tl.load(sin_w_ptr + offs)


@triton.jit
def _band_inverse_h(re, im, cht, sht, PRECISION: tl.constexpr):
    """The H half of ``sum_k e^{+i theta n} X[k]``: ``(C_H^T + i S_H^T)[rows, band] X``."""
    v_re = tl.dot(cht, re, input_precision=PRECISION) - tl.dot(sht, im, input_precision=PRECISION)
    v_im = tl.dot(cht, im, input_precision=PRECISION) + tl.dot(sht, re, input_precision=PRECISION)
    return v_re, v_im


@triton.jit
def _band_inverse_w(v_re, v_im, cos_w, sin_w, PRECISION: tl.constexpr):
    """The W half, on one chunk of columns: ``v (C_W + i S_W)``, (real, imaginary), unnormalised."""
    out_re = tl.dot(v_re, cos_w, input_precision=PRECISION) - tl.dot(v_im, sin_w, input_precision=PRECISION)
    out_im = tl.dot(v_re, sin_w, input_precision=PRECISION) + tl.dot(v_im, cos_w, input_precision=PRECISION)
    return out_re, out_im


@triton.jit
def _band_inverse_w_real(v_re, v_im, cos_w, sin_w, PRECISION: tl.constexpr):
    """``Re(v (C_W + i S_W))`` on one chunk of columns: the adjoint of a real input's band DFT."""
    return tl.dot(v_re, cos_w, input_precision=PRECISION) - tl.dot(v_im, sin_w, input_precision=PRECISION)


@triton.jit
def _exchanged_pixels(
    p,
    v_re,
    v_im,
    cos_w,
    sin_w,
    inv_hw,
    RECON_ABS: tl.constexpr,
    HALF_BAND_W: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``y = p + ifft2_band(Delta)`` on one chunk, from ``v``, the H half of the inverse on the
    chunk's rows: (Re y, Im y, the reconstructed value |y| or Re y). With the half W band ``y`` is
    real: Im y is zero and not computed."""
    if HALF_BAND_W:
        re = p + _band_inverse_w_real(v_re, v_im, cos_w, sin_w, PRECISION) * inv_hw
        im = tl.zeros_like(re)
        value = tl.abs(re) if RECON_ABS else re
    else:
        y_re, y_im = _band_inverse_w(v_re, v_im, cos_w, sin_w, PRECISION)
        re = p + y_re * inv_hw
        im = y_im * inv_hw
        value = tl.sqrt(re * re + im * im) if RECON_ABS else re
    return re, im, value


@triton.jit
def _band_spectra(
    x_t_ptr,
    eps_ptr,
    ref_t_ptr,
    eps_ref_ptr,
    cos_h_ptr,
    sin_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    base,
    sqrt_abar,
    sqrt_one_minus_abar,
    ref_sqrt_abar,
    ref_sqrt_one_minus_abar,
    H: tl.constexpr,
    W: tl.constexpr,
    H_PAD: tl.constexpr,
    HAS_EPS_REF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BAND_H: tl.constexpr,
    BAND_W: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Stream the plane's rows; return the band spectra of x0's and the reference's pixel images,
    ``F = D_band_H . p . D_band_W^T``: (F_x0 re, im, F_ref re, im), each [BAND_H, BAND_W]."""
    kh = tl.arange(0, BAND_H)
    f0_re = tl.zeros((BAND_H, BAND_W), tl.float32)
    f0_im = tl.zeros((BAND_H, BAND_W), tl.float32)
    fr_re = tl.zeros((BAND_H, BAND_W), tl.float32)
    fr_im = tl.zeros((BAND_H, BAND_W), tl.float32)
    for m0 in range(0, H, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        # Row transform p . D_W^T = Tc - i Ts, over chunks of BLOCK_K columns (see the module notes).
        tc0 = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        ts0 = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        tcr = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        tsr = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        for k0 in range(0, W, BLOCK_K):
            cols, inside, offs = _chunk(base, rows, k0, H, W, BLOCK_K)
            x_t = tl.load(x_t_ptr + offs, mask=inside, other=0.0)
            eps = tl.load(eps_ptr + offs, mask=inside, other=0.0)
            p0 = tl.where(inside, _to_pixels((x_t - eps * sqrt_one_minus_abar) / sqrt_abar), 0.0)
            ref = tl.load(ref_t_ptr + offs, mask=inside, other=0.0)
            if HAS_EPS_REF:
                eps_ref = tl.load(eps_ref_ptr + offs, mask=inside, other=0.0)
                ref = (ref - eps_ref * ref_sqrt_one_minus_abar) / ref_sqrt_abar
            pr = tl.where(inside, _to_pixels(ref), 0.0)
            cos_wt, sin_wt = _band_columns_t(cos_w_ptr, sin_w_ptr, cols, BLOCK_W, BAND_W)
            tc0 += tl.dot(p0, cos_wt, input_precision=PRECISION)
            ts0 += tl.dot(p0, sin_wt, input_precision=PRECISION)
            tcr += tl.dot(pr, cos_wt, input_precision=PRECISION)
            tsr += tl.dot(pr, sin_wt, input_precision=PRECISION)
        # F += D_H[:, rows] (Tc - i Ts).
        ch = tl.load(cos_h_ptr + kh[:, None] * H_PAD + rows[None, :])
        sh = tl.load(sin_h_ptr + kh[:, None] * H_PAD + rows[None, :])
        f0_re += tl.dot(ch, tc0, input_precision=PRECISION) - tl.dot(sh, ts0, input_precision=PRECISION)
        f0_im -= tl.dot(sh, tc0, input_precision=PRECISION) + tl.dot(ch, ts0, input_precision=PRECISION)
        fr_re += tl.dot(ch, tcr, input_precision=PRECISION) - tl.dot(sh, tsr, input_precision=PRECISION)
        fr_im -= tl.dot(sh, tcr, input_precision=PRECISION) + tl.dot(ch, tsr, input_precision=PRECISION)
    return f0_re, f0_im, fr_re, fr_im


@triton.jit
def _exchange_mix(f0_re, f0_im, fr_re, fr_im, in_amp, in_phase, cos_delta, sin_delta, PROJECT: tl.constexpr):
    """The exchange in band space, with phasors, not angles: amplitude from the reference inside
    the amplitude disc, phase from it inside the phase disc ("project": x0's phase where
    ``cos d >= cos delta``, else the reference's rotated by +-delta; the sign from Im(u0 conj(ur)),
    so the +-pi wrap-around is exact). Returns the unit phasors and magnitudes of both spectra, the
    output amplitude and phasor, where the phase came from the reference, and
    ``Delta = F_out - F_x0`` (zero outside the discs)."""
    u0_re, u0_im, amp0 = _unit_phasor(f0_re, f0_im)
    ur_re, ur_im, ampr = _unit_phasor(fr_re, fr_im)
    amp = tl.where(in_amp, ampr, amp0)
    if PROJECT:
        cos_d = u0_re * ur_re + u0_im * ur_im
        sin_d = u0_im * ur_re - u0_re * ur_im
        sign = tl.where(sin_d > 0, 1.0, -1.0)
        rot_re = ur_re * cos_delta - ur_im * sign * sin_delta
        rot_im = ur_im * cos_delta + ur_re * sign * sin_delta
        keep = cos_d >= cos_delta  # |d| <= delta: x0's phase (torch's clamp passes, inclusive)
        phase_from_ref = in_phase & (cos_d < cos_delta)
        ph_re = tl.where(in_phase, tl.where(keep, u0_re, rot_re), u0_re)
        ph_im = tl.where(in_phase, tl.where(keep, u0_im, rot_im), u0_im)
    else:
        phase_from_ref = in_phase
        ph_re = tl.where(in_phase, ur_re, u0_re)
        ph_im = tl.where(in_phase, ur_im, u0_im)
    changed = in_amp | in_phase
    d_re = tl.where(changed, amp * ph_re - f0_re, 0.0)
    d_im = tl.where(changed, amp * ph_im - f0_im, 0.0)
    return u0_re, u0_im, amp0, ur_re, ur_im, ampr, amp, ph_re, ph_im, phase_from_ref, changed, d_re, d_im


@triton.jit
def exchange_update_kernel(
    x_t_ptr,
    eps_ptr,
    ref_t_ptr,
    eps_ref_ptr,
    noise_ptr,
    out_ptr,
    noise_out_ptr,
    rng_ptr,
    cos_h_ptr,
    sin_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    amp_mask_ptr,
    phase_mask_ptr,
    weights_w_ptr,
    H: tl.constexpr,
    W: tl.constexpr,
    H_PAD: tl.constexpr,
    sqrt_abar,
    sqrt_one_minus_abar,
    ref_sqrt_abar,
    ref_sqrt_one_minus_abar,
    sqrt_abar_next,
    c1,
    c2,
    cos_delta,
    sin_delta,
    inv_hw,
    HAS_EPS_REF: tl.constexpr,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    PROJECT: tl.constexpr,
    RECON_ABS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BAND_H: tl.constexpr,
    BAND_W: tl.constexpr,
    HALF_BAND_W: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0)
    base = plane.to(tl.int64) * H * W
    kh = tl.arange(0, BAND_H)
    kw = tl.arange(0, BAND_W)

    f0_re, f0_im, fr_re, fr_im = _band_spectra(
        x_t_ptr, eps_ptr, ref_t_ptr, eps_ref_ptr, cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, base, sqrt_abar,
        sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar, H, W, H_PAD, HAS_EPS_REF, BLOCK_M,
        BLOCK_W, BLOCK_K, BAND_H, BAND_W, PRECISION,
    )  # fmt: skip

    # Exchange in band space.
    band_offs = kh[:, None] * BAND_W + kw[None, :]
    in_amp = tl.load(amp_mask_ptr + band_offs) > 0.5
    in_phase = tl.load(phase_mask_ptr + band_offs) > 0.5
    _, _, _, _, _, _, _, _, _, _, _, d_re, d_im = _exchange_mix(
        f0_re, f0_im, fr_re, fr_im, in_amp, in_phase, cos_delta, sin_delta, PROJECT
    )
    if HALF_BAND_W:  # each frequency above 0 stands for itself and its conjugate mirror
        weight = tl.load(weights_w_ptr + kw)[None, :]
        d_re *= weight
        d_im *= weight

    seed, offset = _seed_offset(rng_ptr, NOISE_GIVEN)
    for m0 in range(0, H, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        cht = tl.load(cos_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        sht = tl.load(sin_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        v_re, v_im = _band_inverse_h(d_re, d_im, cht, sht, PRECISION)
        for k0 in range(0, W, BLOCK_K):
            cols, inside, offs = _chunk(base, rows, k0, H, W, BLOCK_K)
            cos_w, sin_w = _band_columns(cos_w_ptr, sin_w_ptr, cols, BLOCK_W, BAND_W)
            x_t = tl.load(x_t_ptr + offs, mask=inside, other=0.0)
            eps = tl.load(eps_ptr + offs, mask=inside, other=0.0)
            p = _to_pixels((x_t - eps * sqrt_one_minus_abar) / sqrt_abar)
            # (Triton's "_" is one variable, which the mix's unpacking above gave another type.)
            y_re, y_im, value = _exchanged_pixels(
                p, v_re, v_im, cos_w, sin_w, inv_hw, RECON_ABS, HALF_BAND_W, PRECISION
            )
            x0 = tl.minimum(
                tl.maximum((tl.minimum(tl.maximum(value, 0.0), 255.0) / 255 - 0.5) * 2, -1.0), 1.0
            )
            z = _noise(noise_ptr, noise_out_ptr, seed, offset, offs, inside, NOISE_GIVEN, STORE_NOISE)
            out = sqrt_abar_next * x0 + c1 * z + c2 * eps
            tl.store(out_ptr + offs, out, mask=inside)
