// The backward of exchange_update (exchange_update_backward.cu's semantics and stages) for 256 x 256
// planes, on a thread-block cluster of eight blocks per plane (sm_90 and later), the shape of the
// forward's exchange_update_cluster.cu. Each block takes 32 rows; only band spectra, [KH x KW],
// cross between blocks, twice:
//
//   1. spectra    block r's shares of F_p and F_q (the band spectra over its rows); after a cluster
//                 barrier every block adds the eight shares in rank order, and takes Delta
//   2. g_y        on the block's rows: y = p + ifft2_band(Delta), g_y under the output clamp
//   3. g_Delta    the block's share of fft2_band(g_y); after a cluster barrier every block adds the
//                 eight in rank order, times 1 / HW, and takes the polar gradient back to g_F_p
//                 and g_F_q
//   4. pixels     the inverse of g_F_p and g_F_q on the block's rows, the clamps and the x0 maps
//
// The one-block backward runs the same stages over the whole plane.
#include "exchange_stages.cuh"

using namespace manipure;

// The kernel's dynamic shared memory: the block's two [rows x KW] transforms; the summed F_p and
// F_q; its shares of F_p, F_q and g_Delta (Delta waits in the last until the share is written),
// [KH x KW] each; float2 (cuda_ops mirrors it).
__host__ __device__ constexpr int exchange_cluster_backward_shared_bytes(int H, int KH, int KW) {
  return (2 * (H / kExchangeClusterBlocks) * KW + 5 * KH * KW) * 8;
}

// One cluster of kExchangeClusterBlocks blocks per plane (grid: planes * 8); H a multiple of 8.
// The arguments are exchange_update_backward_kernel's.
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(8) exchange_update_cluster_backward_kernel(
    const float* __restrict__ grad, const float* __restrict__ x_t, const float* __restrict__ eps,
    const float* __restrict__ ref_t, const float* __restrict__ eps_ref, float* __restrict__ g_x_t,
    float* __restrict__ g_eps, float* __restrict__ g_ref_t, float* __restrict__ g_eps_ref,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [KH, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [KW, W]
    const float* __restrict__ amp_mask, const float* __restrict__ phase_mask,  // [KH, KW]
    int H, int W, int KH, int KW, float sqrt_abar, float sqrt_one_minus_abar, float ref_sqrt_abar,
    float ref_sqrt_one_minus_abar, float sqrt_abar_next, float c1, float c2, float delta,
    int has_eps_ref, int phase_project, int reconstruct_real) {
  static_assert(kExchangeClusterBlocks == 8, "MANIPURE_CLUSTER_DIMS above is the cluster's block count");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; cuda_ops launches this kernel on such devices only
#else
  const ExchangeCoefficients k = {sqrt_abar, sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar,
                                  sqrt_abar_next, c1, c2, delta};
  extern __shared__ float2 smem[];
  const int rows = H / kExchangeClusterBlocks, h0 = (int)cluster_block_rank() * rows;
  const long long base = (long long)(blockIdx.x / kExchangeClusterBlocks) * H * W;
  float2* A = smem;                  // [rows x KW]
  float2* B = A + rows * KW;         // [rows x KW]
  float2* Fp = B + rows * KW;        // [KH x KW]: F_p, then g_F_p
  float2* Fq = Fp + KH * KW;         // [KH x KW]: F_q, then g_F_q
  float2* share_p = Fq + KH * KW;    // this block's shares, read by the cluster
  float2* share_q = share_p + KH * KW;
  float2* share_g = share_q + KH * KW;  // Delta, then this block's share of fft2_band(g_y)
  const float inv_n = 1.0f / (float)(H * W);

  // 1. The band spectra, summed across the cluster, and Delta.
  band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, A, B,
               share_p, share_q, h0, rows);
  cluster_sync();  // every block's shares are in place
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    Fp[idx] = cluster_sum(share_p, idx);
    Fq[idx] = cluster_sum(share_q, idx);
    share_g[idx] = exchange_mix(Fp[idx], Fq[idx], amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project,
                                delta)
                       .delta;
  }
  __syncthreads();

  // 2, 3. g_y on the block's rows (in g_eps and g_ref_t), then its share of fft2_band(g_y) over
  //       Delta (which the inverse columns have read), summed across the cluster.
  const bool real_y = real_part_of_y_suffices(H, W, KH, KW, reconstruct_real);
  exchange_output_gradient(share_g, A, grad, x_t, eps, g_eps, g_ref_t, base, cos_h, sin_h, cos_w, sin_w, H, W, KH,
                           KW, k, reconstruct_real, real_y, h0, rows);
  band_gradient_spectrum(g_eps, g_ref_t, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, B, share_g, 1.0f, real_y,
                         h0, rows);
  cluster_sync();  // every block's share of g_Delta is in place
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const float2 g = cluster_sum(share_g, idx);
    exchange_mix_gradient(Fp[idx], Fq[idx], make_float2(g.x * inv_n, g.y * inv_n), amp_mask[idx] != 0.f,
                          phase_mask[idx] != 0.f, phase_project, delta, Fp[idx], Fq[idx]);
  }
  __syncthreads();

  // 4. Back to pixels on the block's rows.
  exchange_pixel_gradients(Fp, Fq, A, B, grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, base,
                           cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, h0, rows);
  cluster_sync();  // no block returns while another may still read its shares
#endif
}
