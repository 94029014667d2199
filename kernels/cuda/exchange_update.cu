// Fused reverse step after the model call (SPEC §2.1-2.2), one thread block per (image, channel)
// plane, the same semantics as kernels/triton/exchange_update.py:
//
//   x0      = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t)
//   x_ref0  = (ref_t - sqrt(1-abar_f) eps_ref) / sqrt(abar_f)      (or ref_t when there is no eps_ref)
//   p, q    = pixel-scale x0, x_ref0;  F_p, F_q their spectra, only on the band |f| <= floor(R)
//   F_out   = amplitude of F_q inside the amplitude disc, phase of F_q inside the phase disc
//             ("replace"), or x0's phase clipped to within delta of F_q's ("project")
//   x0'     = back to [-1, 1] from |p + ifft2(F_out - F_p)| (or its real part)
//   x_next  = sqrt(abar_next) x0' + c1 z + c2 eps,  z given or drawn from Philox
//
// The exchange changes only the band, so the spectra are band-only DFTs (thin [K, N] twiddle
// tables, K = 2 floor(R) + 1 clipped to N) and the inverse adds ifft2(Delta) to p: exact, and
// O(N^2 K) per plane instead of a full 2-D transform.
//
// Stages (dynamic shared memory, float2): Gp, Gq [H x KW] row transforms; Fp, Fq [KH x KW] band
// spectra; Delta overwrites Fq and the inverse column transform overwrites Gq.
//
// Planes up to 32 x 32 (CIFAR's) take the same stages as matrix products on the tensor cores, in
// 3xTF32 (exchange_tensor_core.cuh). Dynamic shared memory: twelve padded [32 x 36] float tiles.
#include "exchange_stages.cuh"
#include "exchange_tensor_core.cuh"

using manipure::band_inverse_columns;
using manipure::band_inverse_rows;
using manipure::real_part_of_y_suffices;
using manipure::band_spectra;
using manipure::exchange_mix;
using manipure::ExchangeCoefficients;
using manipure::philox_normal;
using manipure::predicted_x0;
using manipure::to_diffusion;
using manipure::to_pixels;

// The whole step for a plane up to 32 x 32 on the tensor cores. Every thread of the block must
// call it.
__device__ __forceinline__ void tensor_core_exchange_update(
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, const float* noise, float* out,
    const long long* rng_state, const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const float* amp_mask, const float* phase_mask, long long base, int H, int W, int KH, int KW,
    const ExchangeCoefficients& k, int has_eps_ref, int has_noise, int phase_project, int reconstruct_real,
    float* smem) {
  const manipure::ExchangeTiles t = manipure::exchange_tiles(smem);
  // The band spectra, Delta over F_q (on the held columns: exchange_tensor_core.cuh), then
  // E = (Ch + i Sh)^T Delta over the row transforms of p.
  const int KW_held = manipure::tensor_core_inverse_columns_of_delta(
      x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask, H, W, KH, KW, k, has_eps_ref,
      phase_project, t, t.Fqr, t.Fqi);
  // Per pixel, y = E (Cw + i Sw) from the accumulators (its imaginary part formed only where it is
  // needed: not for "real", nor where y is real).
  const float inv_n = 1.0f / (float)(H * W);
  const bool real_y = real_part_of_y_suffices(H, W, KH, KW, reconstruct_real);
  manipure::for_each_output_tile(H, W, [&](int m0, int n0) {
    float y_re[4] = {0.f, 0.f, 0.f, 0.f}, y_im[4] = {0.f, 0.f, 0.f, 0.f};
    manipure::tensor_core_inverse_row_tile(y_re, y_im, t.Gpr, t.Gpi, t, m0, n0, KW_held, !real_y);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h = manipure::fragment_row(m0, q), w = manipure::fragment_col(n0, q);
      if (h >= H || w >= W) continue;
      const long long el = base + (long long)h * W + w;
      const float eps_v = eps[el];
      const float re = to_pixels(predicted_x0(x_t, eps, el, k)) + y_re[q] * inv_n, im = y_im[q] * inv_n;
      const float pixel = reconstruct_real ? re : hypotf(re, im);
      const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
      out[el] = k.sqrt_abar_next * to_diffusion(pixel) + k.c1 * z + k.c2 * eps_v;
    }
  });
}

// Scalars travel as plain floats (CuPy passes numpy scalars, not structs).
extern "C" __global__ void exchange_update_kernel(
    const float* __restrict__ x_t, const float* __restrict__ eps, const float* __restrict__ ref_t,
    const float* __restrict__ eps_ref, const float* __restrict__ noise, float* __restrict__ out,
    const long long* __restrict__ rng_state,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [KH, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [KW, W]
    const float* __restrict__ amp_mask, const float* __restrict__ phase_mask,  // [KH, KW]
    int H, int W, int KH, int KW, float sqrt_abar, float sqrt_one_minus_abar, float ref_sqrt_abar,
    float ref_sqrt_one_minus_abar, float sqrt_abar_next, float c1, float c2, float delta,
    int has_eps_ref, int has_noise, int phase_project, int reconstruct_real) {
  const ExchangeCoefficients k = {sqrt_abar, sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar,
                                  sqrt_abar_next, c1, c2, delta};
  extern __shared__ float2 smem[];
  const long long base = (long long)blockIdx.x * H * W;
  if (H <= manipure::kTensorCoreMaxSide && W <= manipure::kTensorCoreMaxSide) {  // as exchange_shared_bytes
    tensor_core_exchange_update(x_t, eps, ref_t, eps_ref, noise, out, rng_state, cos_h, sin_h, cos_w, sin_w,
                                amp_mask, phase_mask, base, H, W, KH, KW, k, has_eps_ref, has_noise, phase_project,
                                reconstruct_real, reinterpret_cast<float*>(smem));
    return;
  }
  float2* Gp = smem;
  float2* Gq = Gp + H * KW;
  float2* Fp = Gq + H * KW;
  float2* Fq = Fp + KH * KW;

  // Stages A and B: both band spectra.
  band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, Gp, Gq,
               Fp, Fq);

  // Mix: Delta = F_out - F_p inside the discs, 0 outside (written over Fq).
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x)
    Fq[idx] = exchange_mix(Fp[idx], Fq[idx], amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project, k.delta)
                  .delta;
  __syncthreads();

  // Inverse column transform of Delta: E[h][j] = sum_i Delta[i][j] e^{+i theta_i h} (over Gq, with
  // the columns of theta and -theta paired for the inverse rows).
  float2* E = Gq;
  band_inverse_columns(Fq, E, cos_h, sin_h, H, KH, KW);

  // Stage D, per pixel: ifft2(F_out) = p + ifft2(Delta); abs or real; back to [-1, 1]; update.
  const float inv_n = 1.0f / (float)(H * W);
  const auto update = [&](int h, int w, float2 acc, float2) {
    const long long el = base + (long long)h * W + w;
    const float eps_v = eps[el];
    const float re = to_pixels(predicted_x0(x_t, eps, el, k)) + acc.x * inv_n, im = acc.y * inv_n;
    const float pixel = reconstruct_real ? re : hypotf(re, im);  // hypotf(re, 0) = |re|
    const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
    out[el] = k.sqrt_abar_next * to_diffusion(pixel) + k.c1 * z + k.c2 * eps_v;
  };
  if (real_part_of_y_suffices(H, W, KH, KW, reconstruct_real))
    band_inverse_rows<false, true>(E, nullptr, H, W, KW, cos_w, sin_w, update);
  else
    band_inverse_rows<false>(E, nullptr, H, W, KW, cos_w, sin_w, update);
}
