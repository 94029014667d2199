// MANI re-noising (SPEC §1) for planes up to 64 x 64, one thread block per (image, channel)
// plane, the same semantics as kernels/triton/mani_noise.py and manipure_fast.reference.mani:
//
//   F   = fft2(x)                       (DFT as two passes over cached twiddle tables)
//   M_b = mean |F| over band b          (the cached band map; deterministic block reductions)
//   w_b = 1 / (M_b^gamma + eps0)
//   W   = |Re ifft2(w[band] F)| ("spectral") or |Re ifft2(w[band])| ("kernel"), normalised per
//         plane to unit RMS or unit max (an all-zero map becomes 1), or left as is; the
//         inverse is real (its spectrum is Hermitian), so only its real part is formed
//   x_t = sqrt(abar_t) x + sqrt(1 - abar_t) W z,  z given or drawn from Philox
//
// Planes up to 32 x 32 (CIFAR's) take the transforms as matrix products on the tensor cores, in
// 3xTF32, on half the W spectrum (mani_tensor_core.cuh): at 32 x 32 a plane's 12 real products
// over the whole spectrum are about 393 K multiply-adds, more than fp32 FMAs can do within T3
// (docs/kernels.md). Dynamic shared memory: nine padded
// [32 x 36] float tiles (x and later the signed map, the four twiddle tables, the row transform and
// the spectrum, weighted in place), then 32 floats of reduction scratch and n_bands weights.
//
// Larger planes take the FMA loops of mani_stages.cuh. Dynamic shared memory: X [H W] float
// (later the map), G and F [H W] float2, 32 floats of reduction scratch and n_bands weights.
#include "mani_tensor_core.cuh"

using manipure::band_weights;
using manipure::block_reduce;
using manipure::inverse_columns;
using manipure::inverse_row_real;
using manipure::kManiForwardTiles;
using manipure::kTensorCoreMaxSide;
using manipure::kTileFloats;
using manipure::kTileStride;
using manipure::mani_tiles;
using manipure::inject_at;
using manipure::normalised_map;
using manipure::plane_spectrum;
using manipure::tensor_core_signed_map;

extern "C" __global__ void mani_noise_kernel(
    const float* __restrict__ x, const float* __restrict__ noise, float* __restrict__ out,
    float* __restrict__ noise_out, const long long* __restrict__ rng_state,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [H, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [W, W]
    const int* __restrict__ band_map,                                  // [H, W], unshifted
    const float* __restrict__ band_counts,                             // [n_bands], >= 1
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int has_noise, int store_noise) {
  extern __shared__ float smem_f[];
  const int n = H * W;
  const long long base = (long long)blockIdx.x * n;
  const float inv_n = 1.0f / (float)n;
  const bool tensor_cores = H <= kTensorCoreMaxSide && W <= kTensorCoreMaxSide;  // as mani_shared_bytes
  float local_sq = 0.f, local_max = 0.f;
  float *map, *scratch;  // the unnormalised map, signed, at row stride map_stride
  int map_stride;
  if (tensor_cores) {
    scratch = smem_f + kManiForwardTiles * kTileFloats;
    const auto tiles = mani_tiles(smem_f, true);
    tensor_core_signed_map(tiles, x, base, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, H, W, n_bands,
                           gamma, eps0, weight_kernel, scratch, nullptr, scratch + 32, local_sq, local_max);
    map = tiles.X;
    map_stride = kTileStride;
  } else {
    float* X = smem_f;
    float2* G = reinterpret_cast<float2*>(X + ((n + 1) & ~1));  // 8-byte aligned
    float2* F = G + n;
    scratch = reinterpret_cast<float*>(F + n);
    float* weights = scratch + 32;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) X[idx] = x[base + idx];
    __syncthreads();

    // F = DFT(x); the band means and weights; the weighted spectrum's inverse column transform.
    plane_spectrum(X, G, F, cos_h, sin_h, cos_w, sin_w, H, W);
    band_weights(F, band_map, band_counts, n, n_bands, gamma, eps0, scratch, nullptr, weights);
    inverse_columns(F, weights, band_map, weight_kernel, G, cos_h, sin_h, H, W);
    // Inverse row transform (its real part) and |.|: the unnormalised map, over X.
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const int h = idx / W, w = idx - h * W;
      const float m = fabsf(inverse_row_real(G, h, w, cos_w, sin_w, W) * inv_n);
      X[idx] = m;
      local_sq += m * m;
      local_max = fmaxf(local_max, m);
    }
    map = X;
    map_stride = W;
  }
  // Normalisation: 0 = none, 1 = rms, 2 = max.
  float scale = 1.f;
  if (normalize == 1) scale = sqrtf(block_reduce(local_sq, scratch, false) * inv_n);
  if (normalize == 2) scale = block_reduce(local_max, scratch, true);
  __syncthreads();

  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    const int h = idx / W;
    const float m = fabsf(map[h * map_stride + (idx - h * W)]);
    inject_at(el, normalised_map(m, normalize, scale), x, noise, out, noise_out, rng_state, signal, noise_scale,
              has_noise, store_noise);
  }
}
