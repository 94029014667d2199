"""Fused backward of ``exchange_update``: the gradients of ``x_next`` with respect to x_t, eps,
ref_t and eps_ref, in one launch, equal to autograd through ``reference.exchange_update``.

The forward changes only the band spectrum: ``y = p + ifft2_band(Delta)``, ``Delta = F_out - F_p``
on the frequencies inside either disc. So the backward is band-only too, one program per plane,
streaming ``BLOCK_M`` rows, in three passes:

pass A: recompute the band spectra F_p, F_q of both pixel images (as forward pass 1), then the
        exchange: amplitudes, unit phasors, the phase each frequency takes, Delta.
pass B: recompute y row by row, the output clip mask and g_y = dL/dy (abs: g_v y/|y|; real: g_v);
        keep Re(g_y) (the direct path y = p + ...) in grad_x_t's rows; accumulate
        g_Delta = (1/HW) sum_n g_y[n] e^{-i theta n} on the band.
mix:    g_Delta through polar(amplitude, phase): g_A = Re(g conj(U)), g_phi = A Im(g conj(U)), each
        sent to the spectrum it was taken from (|F|' = U, angle(F)' = iU/|F|, zero where F = 0 as
        torch defines them), and -g_Delta to F_p.
pass C: g_p = Re(g_y) + Re(sum_k e^{+i theta n} g_Fp[k]), g_q likewise (the adjoint of a real
        input's DFT), through the [0, 255] clamps (inclusive, as torch's) and the x0 maps.

With ``HALF_BAND_W`` (see exchange_update.py) the band holds W's non-negative frequencies and
``y`` is real, so g_y is real (abs: ``g_v sign(y)``) and its band transform takes two dots, not
four; ``g_Delta`` takes each frequency's weight (2 above frequency 0), the derivative of the
weighted inverse. ``F = DFT_half(p)`` holds each coefficient once, so pass C's adjoint is unweighted.

Memory traffic per plane: reads 4 planes in pass A (3 with reference="input"), grad, x_t and eps
in pass B and writes 1; reads 5 (4) planes and writes 4 (3) in pass C. The noise has no gradient
beyond ``c1 * grad``, which the Function adds without a kernel.
"""

import triton
import triton.language as tl

from .exchange_update import (
    _band_columns,
    _band_columns_t,
    _band_inverse_h,
    _band_inverse_w_real,
    _band_spectra,
    _chunk,
    _exchange_mix,
    _exchanged_pixels,
    _to_pixels,
)


@triton.jit
def exchange_update_backward_kernel(
    grad_ptr,
    x_t_ptr,
    eps_ptr,
    ref_t_ptr,
    eps_ref_ptr,
    g_x_t_ptr,
    g_eps_ptr,
    g_ref_t_ptr,
    g_eps_ref_ptr,
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
    c2,
    cos_delta,
    sin_delta,
    inv_hw,
    HAS_EPS_REF: tl.constexpr,
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

    # ---- pass A: the band spectra and the exchange, as in the forward -------------------------
    f0_re, f0_im, fr_re, fr_im = _band_spectra(
        x_t_ptr, eps_ptr, ref_t_ptr, eps_ref_ptr, cos_h_ptr, sin_h_ptr, cos_w_ptr, sin_w_ptr, base, sqrt_abar,
        sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar, H, W, H_PAD, HAS_EPS_REF, BLOCK_M,
        BLOCK_W, BLOCK_K, BAND_H, BAND_W, PRECISION,
    )  # fmt: skip
    band_offs = kh[:, None] * BAND_W + kw[None, :]
    in_amp = tl.load(amp_mask_ptr + band_offs) > 0.5
    in_phase = tl.load(phase_mask_ptr + band_offs) > 0.5
    u0_re, u0_im, amp0, ur_re, ur_im, ampr, amp, ph_re, ph_im, phase_from_ref, changed, d_re, d_im = (
        _exchange_mix(f0_re, f0_im, fr_re, fr_im, in_amp, in_phase, cos_delta, sin_delta, PROJECT)
    )
    if HALF_BAND_W:  # as the forward: y is the inverse of weight * Delta
        weight = tl.load(weights_w_ptr + kw)[None, :]
        d_re *= weight
        d_im *= weight

    # ---- pass B: g_y on each row, Re(g_y) kept, g_Delta accumulated on the band ---------------
    gd_re = tl.zeros((BAND_H, BAND_W), tl.float32)
    gd_im = tl.zeros((BAND_H, BAND_W), tl.float32)
    out_scale = sqrt_abar_next * (2.0 / 255.0)
    for m0 in range(0, H, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        cht = tl.load(cos_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        sht = tl.load(sin_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        v_re, v_im = _band_inverse_h(d_re, d_im, cht, sht, PRECISION)
        # g_y . D_W^T = Tr + i Ti, D = C - iS, for a complex g_y, over chunks of BLOCK_K columns.
        tr = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        ti = tl.zeros((BLOCK_M, BAND_W), tl.float32)
        for k0 in range(0, W, BLOCK_K):
            cols, inside, offs = _chunk(base, rows, k0, H, W, BLOCK_K)
            cos_w, sin_w = _band_columns(cos_w_ptr, sin_w_ptr, cols, BLOCK_W, BAND_W)
            x_t = tl.load(x_t_ptr + offs, mask=inside, other=0.0)
            eps = tl.load(eps_ptr + offs, mask=inside, other=0.0)
            p = _to_pixels((x_t - eps * sqrt_one_minus_abar) / sqrt_abar)
            re, im, value = _exchanged_pixels(
                p, v_re, v_im, cos_w, sin_w, inv_hw, RECON_ABS, HALF_BAND_W, PRECISION
            )
            grad = tl.load(grad_ptr + offs, mask=inside, other=0.0)
            g_value = tl.where(inside & (value >= 0.0) & (value <= 255.0), grad * out_scale, 0.0)
            if RECON_ABS:
                safe = tl.where(value > 0, value, 1.0)
                gy_re = tl.where(value > 0, g_value * re / safe, 0.0)
            else:
                gy_re = g_value
            tl.store(g_x_t_ptr + offs, gy_re, mask=inside)
            cos_wt, sin_wt = _band_columns_t(cos_w_ptr, sin_w_ptr, cols, BLOCK_W, BAND_W)
            if HALF_BAND_W:  # g_y is real
                tr += tl.dot(gy_re, cos_wt, input_precision=PRECISION)
                ti -= tl.dot(gy_re, sin_wt, input_precision=PRECISION)
            else:
                if RECON_ABS:
                    gy_im = tl.where(value > 0, g_value * im / safe, 0.0)
                else:
                    gy_im = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
                tr += tl.dot(gy_re, cos_wt, input_precision=PRECISION) + tl.dot(
                    gy_im, sin_wt, input_precision=PRECISION
                )
                ti += tl.dot(gy_im, cos_wt, input_precision=PRECISION) - tl.dot(
                    gy_re, sin_wt, input_precision=PRECISION
                )
        # g_Delta += D_H[:, rows] (Tr + i Ti).
        ch = tl.load(cos_h_ptr + kh[:, None] * H_PAD + rows[None, :])
        sh = tl.load(sin_h_ptr + kh[:, None] * H_PAD + rows[None, :])
        gd_re += tl.dot(ch, tr, input_precision=PRECISION) + tl.dot(sh, ti, input_precision=PRECISION)
        gd_im += tl.dot(ch, ti, input_precision=PRECISION) - tl.dot(sh, tr, input_precision=PRECISION)

    # ---- mix: g_Delta through polar(amplitude, phase) back to F_p and F_q ----------------------
    gd_re = tl.where(changed, gd_re * inv_hw, 0.0)
    gd_im = tl.where(changed, gd_im * inv_hw, 0.0)
    if HALF_BAND_W:  # the weights' derivative: 2 for a frequency that stands for its mirror too
        gd_re *= weight
        gd_im *= weight
    g_amp = gd_re * ph_re + gd_im * ph_im
    g_phase = amp * (gd_im * ph_re - gd_re * ph_im)
    # |F|' = U and angle(F)' = iU/|F|; torch defines both as zero where F = 0.
    live0 = amp0 > 0
    liver = ampr > 0
    amp_to_x0 = tl.where(in_amp, 0.0, tl.where(live0, g_amp, 0.0))
    amp_to_ref = tl.where(in_amp & liver, g_amp, 0.0)
    phase_to_x0 = tl.where(phase_from_ref, 0.0, tl.where(live0, g_phase / tl.where(live0, amp0, 1.0), 0.0))
    phase_to_ref = tl.where(phase_from_ref & liver, g_phase / tl.where(liver, ampr, 1.0), 0.0)
    g0_re = amp_to_x0 * u0_re - phase_to_x0 * u0_im - gd_re
    g0_im = amp_to_x0 * u0_im + phase_to_x0 * u0_re - gd_im
    gr_re = amp_to_ref * ur_re - phase_to_ref * ur_im
    gr_im = amp_to_ref * ur_im + phase_to_ref * ur_re

    # ---- pass C: back to pixels, through the clamps and the x0 maps ----------------------------
    tl.debug_barrier()  # pass B's stores of Re(g_y) are read back by other threads of this program
    for m0 in range(0, H, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        cht = tl.load(cos_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        sht = tl.load(sin_h_ptr + kh[None, :] * H_PAD + rows[:, None])
        vp_re, vp_im = _band_inverse_h(g0_re, g0_im, cht, sht, PRECISION)
        vq_re, vq_im = _band_inverse_h(gr_re, gr_im, cht, sht, PRECISION)
        for k0 in range(0, W, BLOCK_K):
            cols, inside, offs = _chunk(base, rows, k0, H, W, BLOCK_K)
            cos_w, sin_w = _band_columns(cos_w_ptr, sin_w_ptr, cols, BLOCK_W, BAND_W)
            gp_spec = _band_inverse_w_real(vp_re, vp_im, cos_w, sin_w, PRECISION)
            gq_spec = _band_inverse_w_real(vq_re, vq_im, cos_w, sin_w, PRECISION)
            g_p = tl.load(g_x_t_ptr + offs, mask=inside, other=0.0) + gp_spec
            x_t = tl.load(x_t_ptr + offs, mask=inside, other=0.0)
            eps = tl.load(eps_ptr + offs, mask=inside, other=0.0)
            u = ((x_t - eps * sqrt_one_minus_abar) / sqrt_abar) / 2 + 0.5
            g_x0 = tl.where((u >= 0.0) & (u <= 1.0), g_p * 127.5, 0.0)
            grad = tl.load(grad_ptr + offs, mask=inside, other=0.0)
            tl.store(g_x_t_ptr + offs, g_x0 / sqrt_abar, mask=inside)
            tl.store(g_eps_ptr + offs, c2 * grad - g_x0 * (sqrt_one_minus_abar / sqrt_abar), mask=inside)
            ref = tl.load(ref_t_ptr + offs, mask=inside, other=0.0)
            if HAS_EPS_REF:
                eps_ref = tl.load(eps_ref_ptr + offs, mask=inside, other=0.0)
                ref = (ref - eps_ref * ref_sqrt_one_minus_abar) / ref_sqrt_abar
            u_ref = ref / 2 + 0.5
            g_ref0 = tl.where((u_ref >= 0.0) & (u_ref <= 1.0), gq_spec * 127.5, 0.0)
            if HAS_EPS_REF:
                tl.store(g_ref_t_ptr + offs, g_ref0 / ref_sqrt_abar, mask=inside)
                tl.store(
                    g_eps_ref_ptr + offs, -g_ref0 * (ref_sqrt_one_minus_abar / ref_sqrt_abar), mask=inside
                )
            else:
                tl.store(g_ref_t_ptr + offs, g_ref0, mask=inside)
