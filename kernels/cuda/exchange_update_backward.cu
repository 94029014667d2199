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
//
// Planes up to 32 x 32 (CIFAR's) take the same stages as matrix products on the tensor cores, in
// 3xTF32, with the forward's recomputation from exchange_tensor_core.cuh: twelve padded tiles.
#include "exchange_stages.cuh"
#include "exchange_tensor_core.cuh"

using manipure::band_gradient_spectrum;
using manipure::band_spectra;
using manipure::exchange_mix;
using manipure::exchange_mix_gradient;
using manipure::exchange_output_gradient;
using manipure::exchange_pixel_gradients;
using manipure::ExchangeCoefficients;
using manipure::output_gradient_at;
using manipure::pixel_gradients_at;
using manipure::real_part_of_y_suffices;

// The whole backward for a plane up to 32 x 32 on the tensor cores, the stages of the FMA path
// below. The tiles, in turn: F_p and F_q stay where the spectra put them until the polar
// gradient; the G pairs take Delta, then E, g_y, the row transform of g_y, g_Delta, and the
// inverse column transforms of g_F_p and g_F_q. Every thread of the block must call it.
__device__ __forceinline__ void tensor_core_exchange_update_backward(
    const float* grad, const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, float* g_x_t,
    float* g_eps, float* g_ref_t, float* g_eps_ref, const float* cos_h, const float* sin_h, const float* cos_w,
    const float* sin_w, const float* amp_mask, const float* phase_mask, long long base, int H, int W, int KH,
    int KW, const ExchangeCoefficients& k, int has_eps_ref, int phase_project, int reconstruct_real,
    float* smem) {
  using manipure::fragment_col;
  using manipure::fragment_row;
  using manipure::kTileStride;
  const manipure::ExchangeTiles t = manipure::exchange_tiles(smem);
  const float inv_n = 1.0f / (float)(H * W);

  // ---- recompute the band spectra, Delta (into Gq) and E = (Ch + i Sh)^T Delta (into Gp), on the
  //      forward's held columns ----------------------------------------------------------------------
  const int KW_held = manipure::tensor_core_inverse_columns_of_delta(
      x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask, H, W, KH, KW, k, has_eps_ref,
      phase_project, t, t.Gqr, t.Gqi);

  // ---- y = p + ifft2_band(Delta) per pixel; g_y into Gq (zero off the plane), Re g_y in g_eps.
  //      Where Re y suffices (real_part_of_y_suffices), Im y is not formed and g_y is real. ----
  const bool real_y = real_part_of_y_suffices(H, W, KH, KW, reconstruct_real);
  manipure::for_each_output_tile(H, W, [&](int m0, int n0) {
    float y_re[4] = {0.f, 0.f, 0.f, 0.f}, y_im[4] = {0.f, 0.f, 0.f, 0.f};
    manipure::tensor_core_inverse_row_tile(y_re, y_im, t.Gpr, t.Gpi, t, m0, n0, KW_held, !real_y);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h = fragment_row(m0, q), w = fragment_col(n0, q), e = h * kTileStride + w;
      float2 gy = make_float2(0.f, 0.f);
      if (h < H && w < W) {
        const long long el = base + (long long)h * W + w;
        gy = output_gradient_at(grad, x_t, eps, el, y_re[q], y_im[q], inv_n, k, reconstruct_real);
        g_eps[el] = gy.x;
      }
      t.Gqr[e] = gy.x;
      t.Gqi[e] = gy.y;
    }
  });
  __syncthreads();  // the product below reads other warps' g_y

  // ---- g_Delta HW = fft2_band(g_y): rows B = g_y (Cw - i Sw)^T into Gp, columns (Ch - i Sh) B
  //      into Gq. Re B = gr Cw^T + gi Sw^T, Im B = gi Cw^T - gr Sw^T; without gi's terms for a
  //      real g_y. ----------------------------------------------------------------------------
  manipure::complex_tile_product<false, true>(t.Gqr, real_y ? nullptr : t.Gqi, t.Cw, t.Sw, 1.f, 1.f, -1.f, 1.f,
                                              t.Gpr, t.Gpi, manipure::rows_pass(H, W, KW_held));
  manipure::complex_tile_product(t.Ch, t.Sh, t.Gpr, t.Gpi, 1.f, 1.f, 1.f, -1.f, t.Gqr, t.Gqi,
                                 manipure::columns_pass(H, KH, KW_held));

  // ---- through polar(amplitude, phase) back to F_p and F_q (written over them), on the held
  //      columns; y depends on a held column's Delta through its multiplicity, so g_Delta takes it --
  for (int idx = threadIdx.x; idx < KH * KW_held; idx += blockDim.x) {
    const int i = idx / KW_held, j = idx - i * KW_held, e = i * kTileStride + j;
    const float scale = inv_n * manipure::held_column_weight(j, KW_held, KW);
    float2 gp, gq;
    exchange_mix_gradient(make_float2(t.Fpr[e], t.Fpi[e]), make_float2(t.Fqr[e], t.Fqi[e]),
                          make_float2(t.Gqr[e] * scale, t.Gqi[e] * scale), amp_mask[i * KW + j] != 0.f,
                          phase_mask[i * KW + j] != 0.f, phase_project, k.delta, gp, gq);
    t.Fpr[e] = gp.x;
    t.Fpi[e] = gp.y;
    t.Fqr[e] = gq.x;
    t.Fqi[e] = gq.y;
  }
  __syncthreads();

  // ---- back to pixels: the inverse column transforms of g_F_p (into Gp) and g_F_q (into Gq),
  //      the real parts of the inverse rows, then the clamps and x0 maps --------------------------
  manipure::tensor_core_inverse_columns(t, t.Fpr, t.Fpi, t.Gpr, t.Gpi, H, KH, KW_held);
  manipure::tensor_core_inverse_columns(t, t.Fqr, t.Fqi, t.Gqr, t.Gqi, H, KH, KW_held);
  manipure::for_each_output_tile(H, W, [&](int m0, int n0) {
    float gp_spec[4] = {0.f, 0.f, 0.f, 0.f}, gq_spec[4] = {0.f, 0.f, 0.f, 0.f}, unused[4] = {};
    manipure::tensor_core_inverse_row_tile(gp_spec, unused, t.Gpr, t.Gpi, t, m0, n0, KW_held, false);
    manipure::tensor_core_inverse_row_tile(gq_spec, unused, t.Gqr, t.Gqi, t, m0, n0, KW_held, false);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h = fragment_row(m0, q), w = fragment_col(n0, q);
      if (h >= H || w >= W) continue;
      const long long el = base + (long long)h * W + w;
      const float g_p = g_eps[el] + gp_spec[q];  // Re(g_y), kept above by this same lane
      pixel_gradients_at(el, g_p, gq_spec[q], grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, k,
                         has_eps_ref);
    }
  });
}

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
  if (H <= manipure::kTensorCoreMaxSide && W <= manipure::kTensorCoreMaxSide) {  // as exchange_backward_shared_bytes
    tensor_core_exchange_update_backward(grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, cos_h,
                                         sin_h, cos_w, sin_w, amp_mask, phase_mask, base, H, W, KH, KW, k,
                                         has_eps_ref, phase_project, reconstruct_real, reinterpret_cast<float*>(smem));
    return;
  }
  const float inv_n = 1.0f / (float)(H * W);

  // ---- recompute the band spectra and Delta, as the forward -----------------------------------
  band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, A, B,
               Fp, Fq);
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x)
    D[idx] = exchange_mix(Fp[idx], Fq[idx], amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project, delta)
                 .delta;
  __syncthreads();

  // ---- g_y (in g_eps and g_ref_t), then g_Delta = fft2_band(g_y) / HW over D --------------------
  const bool real_y = real_part_of_y_suffices(H, W, KH, KW, reconstruct_real);
  exchange_output_gradient(D, A, grad, x_t, eps, g_eps, g_ref_t, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k,
                           reconstruct_real, real_y);
  band_gradient_spectrum(g_eps, g_ref_t, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, B, D, inv_n, real_y);

  // ---- through polar(amplitude, phase) back to F_p and F_q (written over Fp, Fq) ---------------
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x)
    exchange_mix_gradient(Fp[idx], Fq[idx], D[idx], amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project,
                          delta, Fp[idx], Fq[idx]);
  __syncthreads();

  // ---- back to pixels ------------------------------------------------------------------------------
  exchange_pixel_gradients(Fp, Fq, A, B, grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, base,
                           cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref);
}
