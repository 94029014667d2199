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
// 3xTF32 (tensor_core_dft.cuh): at 32 x 32 a plane's 12 real products are about 393 K multiply-adds,
// more than fp32 FMAs can do within T3 (docs/kernels.md). Dynamic shared memory: nine padded
// [32 x 36] float tiles (x and later the map, the four twiddle tables, the row transform and the
// spectrum), then 32 floats of reduction scratch and n_bands weights.
//
// Larger planes take the FMA loops of mani_stages.cuh. Dynamic shared memory: X [H W] float
// (later the map), G and F [H W] float2, 32 floats of reduction scratch and n_bands weights.
#include "mani_stages.cuh"
#include "tensor_core_dft.cuh"

using manipure::band_weights;
using manipure::band_weights_of;
using manipure::block_reduce;
using manipure::complex_tile_product;
using manipure::for_each_output_tile;
using manipure::fragment_col;
using manipure::fragment_row;
using manipure::inverse_columns;
using manipure::inverse_row_real;
using manipure::kTensorCoreMaxSide;
using manipure::kTileFloats;
using manipure::kTileSide;
using manipure::kTileStride;
using manipure::philox_normal;
using manipure::plane_spectrum;
using manipure::ProductExtent;
using manipure::tile_product_3xtf32;

// The unnormalised map of a plane up to 32 x 32 on the tensor cores, into `tiles` (the first
// tile, at row stride kTileStride); adds the thread's map values to sum_sq and max. Every thread
// of the block must call it; it does not return synchronised.
__device__ __forceinline__ void tensor_core_map(
    const float* x, long long base, const float* cos_h, const float* sin_h, const float* cos_w,
    const float* sin_w, const int* band_map, const float* band_counts, int H, int W, int n_bands, float gamma,
    float eps0, int weight_kernel, float* tiles, float* scratch, float* weights, float& sum_sq, float& max) {
  float *X = tiles, *Cw = X + kTileFloats, *Sw = Cw + kTileFloats, *Ch = Sw + kTileFloats, *Sh = Ch + kTileFloats;
  float *Gr = Sh + kTileFloats, *Gi = Gr + kTileFloats, *Fr = Gi + kTileFloats, *Fi = Fr + kTileFloats;
  // The plane and the twiddle tables, zero outside the plane: the products then leave every
  // element outside it zero, and the padding adds nothing.
  for (int idx = threadIdx.x; idx < kTileSide * kTileSide; idx += blockDim.x) {
    const int r = idx / kTileSide, c = idx - r * kTileSide, e = r * kTileStride + c;
    X[e] = r < H && c < W ? x[base + r * W + c] : 0.f;
    Cw[e] = r < W && c < W ? cos_w[r * W + c] : 0.f;
    Sw[e] = r < W && c < W ? sin_w[r * W + c] : 0.f;
    Ch[e] = r < H && c < H ? cos_h[r * H + c] : 0.f;
    Sh[e] = r < H && c < H ? sin_h[r * H + c] : 0.f;
  }
  __syncthreads();
  // F = C_H (X C_W) with C = cos - i sin (the tables are symmetric): G = X Cw - i X Sw, then
  // Re F = Ch Gr + Sh Gi and Im F = Ch Gi - Sh Gr.
  const ProductExtent rows_pass{H, W, W}, columns_pass{H, W, H};
  complex_tile_product(X, nullptr, Cw, Sw, 1.f, 0.f, -1.f, 0.f, Gr, Gi, rows_pass);
  complex_tile_product(Ch, Sh, Gr, Gi, 1.f, 1.f, 1.f, -1.f, Fr, Fi, columns_pass);
  const int n = H * W;
  band_weights_of(
      [&](int idx) {
        const int kh = idx / W, e = kh * kTileStride + (idx - kh * W);
        return hypotf(Fr[e], Fi[e]);
      },
      band_map, band_counts, n, n_bands, gamma, eps0, scratch, nullptr, weights);
  // P = w[band] F ("spectral") or w[band] ("kernel"), in place.
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int kh = idx / W, e = kh * kTileStride + (idx - kh * W);
    const float wb = weights[band_map[idx]];
    Fr[e] = weight_kernel ? wb : Fr[e] * wb;
    Fi[e] = weight_kernel ? 0.f : Fi[e] * wb;
  }
  __syncthreads();
  // Q = C_H^* P column-wise (Re Q = Ch Pr - Sh Pi, Im Q = Ch Pi + Sh Pr), then the map's real
  // part Re(Q C_W^*) = Qr Cw - Qi Sw, taken from the accumulators; |.| / n into X.
  complex_tile_product(Ch, Sh, Fr, Fi, 1.f, -1.f, 1.f, 1.f, Gr, Gi, columns_pass);
  const float inv_n = 1.0f / (float)n;
  for_each_output_tile(H, W, [&](int m0, int n0) {
    float y[4] = {0.f, 0.f, 0.f, 0.f};
    tile_product_3xtf32(y, Gr, Cw, m0, n0, W, 1.f);
    tile_product_3xtf32(y, Gi, Sw, m0, n0, W, -1.f);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h = fragment_row(m0, q), w = fragment_col(n0, q);
      if (h < H && w < W) {
        const float m = fabsf(y[q] * inv_n);
        X[h * kTileStride + w] = m;
        sum_sq += m * m;
        max = fmaxf(max, m);
      }
    }
  });
}

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
  float *map, *scratch;  // the unnormalised map, at row stride map_stride
  int map_stride;
  if (tensor_cores) {
    scratch = smem_f + 9 * kTileFloats;
    tensor_core_map(x, base, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, H, W, n_bands, gamma, eps0,
                    weight_kernel, smem_f, scratch, scratch + 32, local_sq, local_max);
    map = smem_f;
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
    const float m = map[h * map_stride + (idx - h * W)];
    const float map_value = normalize == 0 ? m : (scale > 0.f ? m / scale : 1.0f);
    const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
    if (store_noise) noise_out[el] = z;
    out[el] = x[el] * signal + (map_value * z) * noise_scale;
  }
}
