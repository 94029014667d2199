// Fused backward of exchange_update (exchange_update.cu): the gradients of x_next with respect to
// x_t, eps, ref_t and eps_ref, equal to autograd through manipure_fast.reference.exchange_update.
// The same algorithm as kernels/triton/exchange_update_backward.py, one thread block per plane:
//
//   recompute F_p, F_q on the band and Delta (as the forward), y = p + ifft2_band(Delta);
//   g_y = dL/dy under the output clamp (abs: g_v y/|y|; real: g_v), kept in g_eps / g_ref_t's
//         rows, which the last stage overwrites;
//   g_Delta = fft2_band(g_y) / HW;
//   through polar(A, phi): g_A = Re(g conj U), g_phi = A Im(g conj U), each to the spectrum it was
//         taken from (|F|' = F/|F|, angle(F)' = iF/|F|^2, zero where F = 0, as torch's), and
//         -g_Delta to F_p;
//   g_p = Re(g_y) + Re(sum_k e^{+i theta n} g_Fp[k]), g_q likewise; then the [0, 255] clamps
//         (inclusive masks) and the x0 maps.
//
// Dynamic shared memory (float2): A, B [H x KW]; Fp, Fq, D [KH x KW]
// = (2 H KW + 3 KH KW) * 8 bytes (cuda_ops.exchange_backward_shared_bytes).
#include "exchange_stages.cuh"

using manipure::band_inverse_columns;
using manipure::band_inverse_rows;
using manipure::band_row_transforms;
using manipure::band_spectra;
using manipure::exchange_mix;
using manipure::ExchangeCoefficients;
using manipure::ExchangeMix;
using manipure::predicted_x0;
using manipure::reference_x0;
using manipure::to_pixels;
using manipure::twiddle_mac;

namespace {
__device__ __forceinline__ bool within(float v, float lo, float hi) { return v >= lo && v <= hi; }
}  // namespace

extern "C" __global__ void exchange_update_backward_kernel(
    const float* __restrict__ grad, const float* __restrict__ x_t, const float* __restrict__ eps,
    const float* __restrict__ ref_t, const float* __restrict__ eps_ref, float* __restrict__ g_x_t,
    float* __restrict__ g_eps, float* __restrict__ g_ref_t, float* __restrict__ g_eps_ref,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [KH, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [KW, W]
    const float* __restrict__ amp_mask, const float* __restrict__ phase_mask,  // [KH, KW]
    int H, int W, int KH, int KW, float sqrt_abar, float sqrt_one_minus_abar, float ref_sqrt_abar,
    float ref_sqrt_one_minus_abar, float sqrt_abar_next, float c1, float c2, float delta,
    int has_eps_ref, int phase_project, int reconstruct_real) {
  // (c1 rides along unused: the noise's gradient, c1 * grad, needs no kernel.)
  const ExchangeCoefficients k = {sqrt_abar, sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar,
                                  sqrt_abar_next, c1, c2, delta};
  extern __shared__ float2 smem[];
  float2* A = smem;           // [H x KW]: row transforms, then inverse column transforms
  float2* B = A + H * KW;     // [H x KW]
  float2* Fp = B + H * KW;    // [KH x KW]: F_p, then g_Fp
  float2* Fq = Fp + KH * KW;  // [KH x KW]: F_q, then g_Fq
  float2* D = Fq + KH * KW;   // [KH x KW]: Delta, then g_Delta

  const long long base = (long long)blockIdx.x * H * W;
  const float inv_n = 1.0f / (float)(H * W);

  // ---- recompute the band spectra and Delta, as the forward -----------------------------------
  band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, A, B,
               Fp, Fq);
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x)
    D[idx] = exchange_mix(Fp[idx], Fq[idx], amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project, delta)
                 .delta;
  __syncthreads();

  // ---- y = p + ifft2_band(Delta), g_y, kept in g_eps (re) and g_ref_t (im) ---------------------
  band_inverse_columns(D, A, cos_h, sin_h, H, KH, KW);
  const float out_scale = sqrt_abar_next * (2.0f / 255.0f);
  band_inverse_rows<false>(A, nullptr, H, W, KW, cos_w, sin_w, [&](int h, int w, float2 acc, float2) {
    const long long el = base + (long long)h * W + w;
    const float re = to_pixels(predicted_x0(x_t, eps, el, k)) + acc.x * inv_n, im = acc.y * inv_n;
    const float value = reconstruct_real ? re : hypotf(re, im);
    const float g_value = within(value, 0.f, 255.f) ? grad[el] * out_scale : 0.f;
    float2 gy = make_float2(g_value, 0.f);
    if (!reconstruct_real) gy = value > 0.f ? make_float2(g_value * re / value, g_value * im / value) : make_float2(0.f, 0.f);
    g_eps[el] = gy.x;
    g_ref_t[el] = gy.y;
  });
  __syncthreads();  // the row transform below reads other threads' g_y

  // ---- g_Delta = fft2_band(g_y) / HW ----------------------------------------------------------
  // Row transforms of g_y = a + i b: sum_w (a + i b) e^{-i theta_j w} = (a_cos + b_sin) + i (b_cos - a_sin).
  band_row_transforms(
      H, W, KW, cos_w, sin_w,
      [&](int h, int w, float& a, float& b) {
        const long long e = base + (long long)h * W + w;
        a = g_eps[e];
        b = g_ref_t[e];
      },
      [&](int h, int j, float a_cos, float a_sin, float b_cos, float b_sin) {
        B[h * KW + j] = make_float2(a_cos + b_sin, b_cos - a_sin);
      });
  __syncthreads();
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const int i = idx / KW, j = idx - i * KW;
    float2 acc = make_float2(0.f, 0.f);
    for (int h = 0; h < H; ++h) acc = twiddle_mac(acc, B[h * KW + j], cos_h[i * H + h], -sin_h[i * H + h]);
    D[idx] = make_float2(acc.x * inv_n, acc.y * inv_n);
  }
  __syncthreads();

  // ---- through polar(amplitude, phase) back to F_p and F_q (written over Fp, Fq) ---------------
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const bool in_amp = amp_mask[idx] != 0.f, in_phase = phase_mask[idx] != 0.f;
    const float2 fp = Fp[idx], fq = Fq[idx];
    float2 gp = make_float2(0.f, 0.f), gq = make_float2(0.f, 0.f);
    if (in_amp || in_phase) {
      const ExchangeMix m = exchange_mix(fp, fq, in_amp, in_phase, phase_project, delta);
      const float2 g = D[idx];
      const float g_amp = g.x * m.c + g.y * m.s;
      const float g_phase = m.amp * (g.y * m.c - g.x * m.s);
      gp = make_float2(-g.x, -g.y);  // Delta = F_out - F_p
      // |F|' = F / |F|
      const float2 amp_src = in_amp ? fq : fp;
      const float amp_mag = in_amp ? m.amp_q : m.amp_p;
      if (amp_mag > 0.f) {
        const float2 add = make_float2(g_amp * amp_src.x / amp_mag, g_amp * amp_src.y / amp_mag);
        if (in_amp) gq = make_float2(gq.x + add.x, gq.y + add.y);
        else gp = make_float2(gp.x + add.x, gp.y + add.y);
      }
      // angle(F)' = i F / |F|^2
      const float2 phase_src = m.phase_from_ref ? fq : fp;
      const float phase_mag = m.phase_from_ref ? m.amp_q : m.amp_p;
      if (phase_mag > 0.f) {
        const float scale = g_phase / (phase_mag * phase_mag);
        const float2 add = make_float2(-scale * phase_src.y, scale * phase_src.x);
        if (m.phase_from_ref) gq = make_float2(gq.x + add.x, gq.y + add.y);
        else gp = make_float2(gp.x + add.x, gp.y + add.y);
      }
    }
    Fp[idx] = gp;
    Fq[idx] = gq;
  }
  __syncthreads();

  // ---- back to pixels: Re(sum_k e^{+i theta n} g_F[k]) for both, then the clamps and x0 maps ----
  for (int idx = threadIdx.x; idx < H * KW; idx += blockDim.x) {
    const int h = idx / KW, j = idx - h * KW;
    float2 ap = make_float2(0.f, 0.f), aq = make_float2(0.f, 0.f);
    for (int i = 0; i < KH; ++i) {
      const float c = cos_h[i * H + h], s = sin_h[i * H + h];
      ap = twiddle_mac(ap, Fp[i * KW + j], c, s);
      aq = twiddle_mac(aq, Fq[i * KW + j], c, s);
    }
    A[idx] = ap;
    B[idx] = aq;
  }
  __syncthreads();
  // Only the real parts are used: the compiler drops the imaginary ones.
  band_inverse_rows<true>(A, B, H, W, KW, cos_w, sin_w, [&](int h, int w, float2 acc_p, float2 acc_q) {
    const float gp_spec = acc_p.x, gq_spec = acc_q.x;
    const long long el = base + (long long)h * W + w;
    const float g_p = g_eps[el] + gp_spec;  // Re(g_y), kept above by this same thread
    const float x0 = predicted_x0(x_t, eps, el, k);
    const float g_x0 = within(x0 / 2.0f + 0.5f, 0.f, 1.f) ? g_p * 127.5f : 0.f;
    g_x_t[el] = g_x0 / sqrt_abar;
    g_eps[el] = c2 * grad[el] - g_x0 * (sqrt_one_minus_abar / sqrt_abar);
    const float xr = reference_x0(ref_t, eps_ref, el, has_eps_ref, k);
    const float g_ref0 = within(xr / 2.0f + 0.5f, 0.f, 1.f) ? gq_spec * 127.5f : 0.f;
    if (has_eps_ref) {
      g_ref_t[el] = g_ref0 / ref_sqrt_abar;
      g_eps_ref[el] = -g_ref0 * (ref_sqrt_one_minus_abar / ref_sqrt_abar);
    } else {
      g_ref_t[el] = g_ref0;
    }
  });
}
