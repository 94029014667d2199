// The stages the MANI kernels share: the plane's spectrum, the band weights, and the (weighted)
// inverse transforms of mani_noise.cu and mani_noise_backward.cu; the gradient stages of both
// backwards; plane-wide sums (band sums, the map's statistic). One definition, so the backward
// recomputes exactly what the forward computed. Include guards rather than #pragma once, because the JIT
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

// ---- the backward's per-pixel and per-coefficient stages (mani_noise_backward.cu and
//      mani_noise_large_backward.cu) -----------------------------------------------------------

// g_Y at one pixel of the map Y (before any 1/N): the normalisation's gradient g_S, where
// g_map = dL/dW = sqrt(1-abar) grad z, through |.| (sign(Y), zero at 0). normalize: 0 none,
// 1 rms (S / s, s = sqrt(<S, S> / N)), 2 max (S / m; torch's amax shares the gradient between
// the n_max tied maxima); dot = <g_map, S>. A plane whose map is zero everywhere (!live) has
// W = 1 and no map gradient.
__device__ __forceinline__ float normalisation_gradient(float y, float g_map, int normalize, bool live, float scale,
                                                        float dot, float n_max, float inv_n) {
  const float s = fabsf(y);
  float g_s = g_map;
  if (normalize == 1) g_s = live ? (g_map - s * (dot * inv_n / (scale * scale))) / scale : 0.f;
  if (normalize == 2) g_s = live ? g_map / scale - (s == scale ? dot / (scale * scale * n_max) : 0.f) : 0.f;
  return y > 0.f ? g_s : y < 0.f ? -g_s : 0.f;
}

// d w_b / d M_b = -gamma M^(gamma-1) w^2, zero at M = 0 (torch's pow gives 0 there for gamma > 1).
__device__ __forceinline__ float band_weight_slope(float mean, float weight, float gamma) {
  return mean > 0.f ? -gamma * powf(mean, gamma - 1.0f) * weight * weight : 0.f;
}

// g_F at one coefficient: w[band] g_G ("spectral" only) plus mean_grad F / |F|, zero where F = 0;
// mean_grad is the band mean's gradient over the band's size.
__device__ __forceinline__ float2 spectrum_gradient(float2 f, float2 g_g, float mean_grad, float weight,
                                                    int weight_kernel) {
  const float mag = hypotf(f.x, f.y);
  float2 g = mag > 0.f ? make_float2(mean_grad * f.x / mag, mean_grad * f.y / mag) : make_float2(0.f, 0.f);
  if (!weight_kernel) g = make_float2(g.x + weight * g_g.x, g.y + weight * g_g.y);
  return g;
}

// ---- the injection ---------------------------------------------------------------------------------

// W at a pixel whose |Y| is m: m itself (normalize 0), else m / scale, and 1 where the plane's map
// is zero everywhere (scale 0).
__device__ __forceinline__ float normalised_map(float m, int normalize, float scale) {
  return normalize == 0 ? m : (scale > 0.f ? m / scale : 1.0f);
}

// x_t = sqrt(abar) x + sqrt(1-abar) W z at element el (signal, noise_scale), with z given
// (has_noise) or drawn from Philox at the element's counter, and stored (store_noise).
__device__ __forceinline__ void inject_at(long long el, float map, const float* x, const float* noise, float* out,
                                          float* noise_out, const long long* rng_state, float signal,
                                          float noise_scale, int has_noise, int store_noise) {
  const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
  if (store_noise) noise_out[el] = z;
  out[el] = x[el] * signal + (map * z) * noise_scale;
}

// ---- plane-wide sums: the map's statistic, and band sums over many coefficients ---------------

// The normalisation statistic of the map |Y| of one plane (map: its n values): sqrt(mean |Y|^2)
// for normalize 1 (rms), max |Y| for 2 (max), 1 for 0 (none), on every thread. The injection and
// its backward share it, so the backward's scale is the forward's bit for bit (max's tie test
// compares against it). Every thread of the block must call it.
__device__ __forceinline__ float map_scale(const float* map, int n, int normalize, float* scratch) {
  float local_sq = 0.f, local_max = 0.f;
  if (normalize != 0) {
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const float m = fabsf(map[idx]);
      local_sq += m * m;
      local_max = fmaxf(local_max, m);
    }
  }
  float scale = 1.f;
  if (normalize == 1) scale = sqrtf(block_reduce(local_sq, scratch, false) / (float)n);
  if (normalize == 2) scale = block_reduce(local_max, scratch, true);
  return scale;
}

// For each band b < n_bands, the block's sum of value(idx) over idx < n with band_of(idx) == b,
// handed to done(b, total) on every thread. Per-thread partials for kBandsPerSweep bands per
// sweep, then one deterministic block reduction per band: the result does not depend on
// scheduling. Every thread of the block must call it; it returns synchronised.
template <typename BandOf, typename Value, typename Done>
__device__ __forceinline__ void band_sums_of(BandOf band_of, int n, int n_bands, float* scratch, Value value,
                                             Done done) {
  constexpr int kBandsPerSweep = 8;  // the default band count: one sweep of the spectrum
  for (int b0 = 0; b0 < n_bands; b0 += kBandsPerSweep) {
    float partial[kBandsPerSweep];
#pragma unroll
    for (int j = 0; j < kBandsPerSweep; ++j) partial[j] = 0.f;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const int slot = band_of(idx) - b0;
      const float v = value(idx);
#pragma unroll
      for (int j = 0; j < kBandsPerSweep; ++j) partial[j] += slot == j ? v : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kBandsPerSweep; ++j) {
      if (b0 + j >= n_bands) break;  // uniform across the block: every thread reduces the same bands
      done(b0 + j, block_reduce(partial[j], scratch, false));
    }
  }
  __syncthreads();
}

// band_sums_of with the bands of an array: band[idx].
template <typename Value, typename Done>
__device__ __forceinline__ void band_sums(const int* band, int n, int n_bands, float* scratch, Value value,
                                          Done done) {
  band_sums_of([&](int idx) { return band[idx]; }, n, n_bands, scratch, value, done);
}

// The band means M_b = mean |F| over band b (into `means`, when given) and the weights
// w_b = 1 / (M_b^gamma + eps0), from band_sums_of: magnitude(idx) is |F| at flat index idx < n
// (times the coefficient's multiplicity where only half the spectrum is held), band_of(idx) its
// band, and band_counts[b] the band's size in the whole spectrum. Every thread of the block must
// call it; it returns synchronised.
template <typename Magnitude, typename BandOf>
__device__ __forceinline__ void band_weights_of(Magnitude magnitude, BandOf band_of, const float* band_counts, int n,
                                                int n_bands, float gamma, float eps0, float* scratch, float* means,
                                                float* weights) {
  band_sums_of(band_of, n, n_bands, scratch, magnitude, [&](int b, float total) {
    if (threadIdx.x == 0) {
      const float mean = total / band_counts[b];
      if (means != nullptr) means[b] = mean;
      weights[b] = 1.0f / (powf(mean, gamma) + eps0);
    }
  });
}

// band_weights_of an [H W] float2 spectrum.
__device__ __forceinline__ void band_weights(const float2* F, const int* band_map, const float* band_counts, int n,
                                             int n_bands, float gamma, float eps0, float* scratch, float* means,
                                             float* weights) {
  band_weights_of([&](int idx) { return hypotf(F[idx].x, F[idx].y); }, [&](int idx) { return band_map[idx]; },
                  band_counts, n, n_bands, gamma, eps0, scratch, means, weights);
}

}  // namespace manipure

#endif  // MANIPURE_MANI_STAGES_CUH
