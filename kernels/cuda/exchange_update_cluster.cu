// The fused reverse step after the model call (exchange_update.cu's semantics) for 256 x 256
// planes (ImageNet's), on a thread-block cluster of eight blocks per plane (sm_90 and later). The
// one-block kernel gives a whole plane to one block: at ImageNet B = 64 that is 192 blocks of
// 93 KB of shared memory, two per SM, on 96 of an H100's 132 SMs. Here each block takes 32 rows,
// and only the band spectra, [KH x KW] and small, cross between blocks:
//
//   1. rows      block r's row transforms of rows 32r..32r+31 onto the band columns, then its
//                share of both band spectra (the column transform over its rows)
//   2. spectra   after a cluster barrier, every block adds the eight shares in rank order, so all
//                blocks hold the same F_p and F_q; then the mix, Delta, in every block
//   3. pixels    the inverse column transform of Delta for the block's rows, then per pixel
//                |p + ifft2(Delta)| (or its real part), the clip and the update
//
// The stages are exchange_stages.cuh's, given the block's rows.
#include "exchange_stages.cuh"

using namespace manipure;

// The kernel's dynamic shared memory: the block's row transforms (two [rows x KW]), its shares of
// the spectra and the spectra themselves (four [KH x KW]), float2 (cuda_ops mirrors it).
__host__ __device__ constexpr int exchange_cluster_shared_bytes(int H, int KH, int KW) {
  return (2 * (H / kExchangeClusterBlocks) * KW + 4 * KH * KW) * 8;
}

// One cluster of kExchangeClusterBlocks blocks per plane (grid: planes * 8); H a multiple of 8.
// The arguments are exchange_update_kernel's.
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(8) exchange_update_cluster_kernel(
    const float* __restrict__ x_t, const float* __restrict__ eps, const float* __restrict__ ref_t,
    const float* __restrict__ eps_ref, const float* __restrict__ noise, float* __restrict__ out,
    const long long* __restrict__ rng_state,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [KH, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [KW, W]
    const float* __restrict__ amp_mask, const float* __restrict__ phase_mask,  // [KH, KW]
    int H, int W, int KH, int KW, float sqrt_abar, float sqrt_one_minus_abar, float ref_sqrt_abar,
    float ref_sqrt_one_minus_abar, float sqrt_abar_next, float c1, float c2, float delta,
    int has_eps_ref, int has_noise, int phase_project, int reconstruct_real) {
  static_assert(kExchangeClusterBlocks == 8, "MANIPURE_CLUSTER_DIMS above is the cluster's block count");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; cuda_ops launches this kernel on such devices only
#else
  const ExchangeCoefficients k = {sqrt_abar, sqrt_one_minus_abar, ref_sqrt_abar, ref_sqrt_one_minus_abar,
                                  sqrt_abar_next, c1, c2, delta};
  extern __shared__ float2 smem[];
  const int rows = H / kExchangeClusterBlocks, h0 = (int)cluster_block_rank() * rows;
  const long long base = (long long)(blockIdx.x / kExchangeClusterBlocks) * H * W;
  float2* Gp = smem;
  float2* Gq = Gp + rows * KW;
  float2* share_p = Gq + rows * KW;  // this block's shares of F_p and F_q, read by the cluster
  float2* share_q = share_p + KH * KW;
  float2* Fp = share_q + KH * KW;
  float2* Fq = Fp + KH * KW;

  // 1. The block's rows: their row transforms and their shares of both band spectra.
  band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW, k, has_eps_ref, Gp, Gq,
               share_p, share_q, h0, rows);
  cluster_sync();  // every block's shares are in place

  // 2. The spectra, added in rank order (the same in every block), and Delta over Fq.
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const float2 fp = cluster_sum(share_p, idx), fq = cluster_sum(share_q, idx);
    Fp[idx] = fp;
    Fq[idx] = exchange_mix(fp, fq, amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project, k.delta).delta;
  }
  __syncthreads();

  // 3. The block's pixels: E = the inverse column transform of Delta on its rows (over Gq), then
  //    ifft2(F_out) = p + ifft2(Delta); abs or real; back to [-1, 1]; the update.
  float2* E = Gq;
  band_inverse_columns(Fq, E, cos_h, sin_h, H, KH, KW, h0, rows);
  const float inv_n = 1.0f / (float)(H * W);
  const auto update = [&](int h, int w, float2 acc, float2) {
    const long long el = base + (long long)(h0 + h) * W + w;
    const float eps_v = eps[el];
    const float re = to_pixels(predicted_x0(x_t, eps, el, k)) + acc.x * inv_n, im = acc.y * inv_n;
    const float pixel = reconstruct_real ? re : hypotf(re, im);  // hypotf(re, 0) = |re|
    const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
    out[el] = k.sqrt_abar_next * to_diffusion(pixel) + k.c1 * z + k.c2 * eps_v;
  };
  if (real_part_of_y_suffices(H, W, KH, KW, reconstruct_real))
    band_inverse_rows<false, true>(E, nullptr, rows, W, KW, cos_w, sin_w, update);
  else
    band_inverse_rows<false>(E, nullptr, rows, W, KW, cos_w, sin_w, update);
  cluster_sync();  // no block returns while another may still read its shares
#endif
}
