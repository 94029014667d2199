// The stages mani_noise.cu and mani_noise_backward.cu share: the plane's spectrum, the band
// weights, and the (weighted) inverse transforms. One definition, so the backward recomputes
// exactly what the forward computed. Include guards rather than #pragma once, because the JIT
// loader inlines this file into each kernel source.
#ifndef MANIPURE_MANI_STAGES_CUH
#define MANIPURE_MANI_STAGES_CUH

#include "manipure_common.cuh"

namespace manipure {

// F = DFT(v) of a real H x W plane v (shared or global memory): the row transform
// G[h][k] = sum_w v[h][w] e^{-i theta_k w}, then F[k][kw] = sum_h G[h][kw] e^{-i theta_k h}.
// The row transform reads the twiddle of (kw, w) at [w][kw]: the full DFT tables are symmetric
// (dft_tables.full_tables: the same entry, bit for bit), and the lanes of a warp, which hold
// consecutive kw, then read consecutive addresses. Every thread of the block must call it; it
// returns synchronised.
__device__ __forceinline__ void plane_spectrum(const float* v, float2* G, float2* F, const float* cos_h,
                                               const float* sin_h, const float* cos_w, const float* sin_w, int H,
                                               int W) {
  const int n = H * W;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int h = idx / W, kw = idx - h * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int w = 0; w < W; ++w) {
      const float value = v[h * W + w];
      acc.x += value * cos_w[w * W + kw];
      acc.y -= value * sin_w[w * W + kw];
    }
    G[idx] = acc;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int kh = idx / W, kw = idx - kh * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int h = 0; h < H; ++h) acc = twiddle_mac(acc, G[h * W + kw], cos_h[kh * H + h], -sin_h[kh * H + h]);
    F[idx] = acc;
  }
  __syncthreads();
}

// The band means M_b = mean |F| over band b (into `means`, when given) and the weights
// w_b = 1 / (M_b^gamma + eps0), one deterministic block reduction per band; magnitude(idx) is
// |F| at flat index idx < n. Every thread of the block must call it; it returns synchronised.
template <typename Magnitude>
__device__ __forceinline__ void band_weights_of(Magnitude magnitude, const int* band_map, const float* band_counts,
                                                int n, int n_bands, float gamma, float eps0, float* scratch,
                                                float* means, float* weights) {
  for (int b = 0; b < n_bands; ++b) {
    float partial = 0.f;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x)
      if (band_map[idx] == b) partial += magnitude(idx);
    const float total = block_reduce(partial, scratch, false);
    if (threadIdx.x == 0) {
      const float mean = total / band_counts[b];
      if (means != nullptr) means[b] = mean;
      weights[b] = 1.0f / (powf(mean, gamma) + eps0);
    }
  }
  __syncthreads();
}

// band_weights_of an [H W] float2 spectrum.
__device__ __forceinline__ void band_weights(const float2* F, const int* band_map, const float* band_counts, int n,
                                             int n_bands, float gamma, float eps0, float* scratch, float* means,
                                             float* weights) {
  band_weights_of([&](int idx) { return hypotf(F[idx].x, F[idx].y); }, band_map, band_counts, n, n_bands, gamma,
                  eps0, scratch, means, weights);
}

// G[h][kw] = sum_kh X[kh][kw] e^{+i theta_kh h}, where X is w[band] F ("spectral"), w[band]
// ("kernel": weight_kernel), or F itself (weights == nullptr). Every thread of the block must
// call it; it returns synchronised.
__device__ __forceinline__ void inverse_columns(const float2* F, const float* weights, const int* band_map,
                                                int weight_kernel, float2* G, const float* cos_h, const float* sin_h,
                                                int H, int W) {
  for (int idx = threadIdx.x; idx < H * W; idx += blockDim.x) {
    const int h = idx / W, kw = idx - h * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int kh = 0; kh < H; ++kh) {
      const int k = kh * W + kw;
      float2 f = F[k];
      if (weights != nullptr) {
        const float wb = weights[band_map[k]];
        f = weight_kernel ? make_float2(wb, 0.f) : make_float2(f.x * wb, f.y * wb);
      }
      acc = twiddle_mac(acc, f, cos_h[kh * H + h], sin_h[kh * H + h]);
    }
    G[idx] = acc;
  }
  __syncthreads();
}

// Re(sum_kw G[h][kw] e^{+i theta_kw w}): the real part of the inverse row transform at one pixel
// (unnormalised). Both of its uses want only that: MANI's map Y is real (its spectrum is
// Hermitian: F is a real plane's and the band map is symmetric under k -> -k), so its imaginary
// part is rounding, and the backward's g_x is the real part of the adjoint.
__device__ __forceinline__ float inverse_row_real(const float2* G, int h, int w, const float* cos_w,
                                                  const float* sin_w, int W) {
  float acc = 0.f;
  for (int kw = 0; kw < W; ++kw) {
    const float2 g = G[h * W + kw];
    acc += g.x * cos_w[kw * W + w] - g.y * sin_w[kw * W + w];
  }
  return acc;
}

}  // namespace manipure

#endif  // MANIPURE_MANI_STAGES_CUH
