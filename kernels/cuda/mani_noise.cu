// MANI re-noising (SPEC §1) for planes up to 64 x 64, one thread block per (image, channel)
// plane, the same semantics as kernels/triton/mani_noise.py and manipure_fast.reference.mani:
//
//   F   = fft2(x)                       (DFT as two passes over cached twiddle tables)
//   M_b = mean |F| over band b          (the cached band map; deterministic block reductions)
//   w_b = 1 / (M_b^gamma + eps0)
//   W   = |ifft2(w[band] F)| ("spectral") or |ifft2(w[band])| ("kernel"), normalised per plane
//         to unit RMS or unit max (an all-zero map becomes 1), or left as is
//   x_t = sqrt(abar_t) x + sqrt(1 - abar_t) W z,  z given or drawn from Philox
//
// Dynamic shared memory: X [H W] float (later the map), G and F [H W] float2, 32 floats of
// reduction scratch and n_bands weights.
#include "manipure_common.cuh"

using manipure::block_reduce;
using manipure::philox_normal;
using manipure::twiddle_mac;

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
  float* X = smem_f;
  float2* G = reinterpret_cast<float2*>(X + ((n + 1) & ~1));  // 8-byte aligned
  float2* F = G + n;
  float* scratch = reinterpret_cast<float*>(F + n);
  float* weights = scratch + 32;

  const long long base = (long long)blockIdx.x * n;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) X[idx] = x[base + idx];
  __syncthreads();

  // Row transform G[h][k] = sum_w X[h][w] e^{-i theta_k w}.
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int h = idx / W, kw = idx - h * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int w = 0; w < W; ++w) {
      const float v = X[h * W + w];
      acc.x += v * cos_w[kw * W + w];
      acc.y -= v * sin_w[kw * W + w];
    }
    G[idx] = acc;
  }
  __syncthreads();
  // Column transform F[k][kw] = sum_h G[h][kw] e^{-i theta_k h}.
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int kh = idx / W, kw = idx - kh * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int h = 0; h < H; ++h) {
      const float c = cos_h[kh * H + h], s = sin_h[kh * H + h];
      const float2 g = G[h * W + kw];
      acc = twiddle_mac(acc, g, c, -s);
    }
    F[idx] = acc;
  }
  __syncthreads();

  // Band means and weights, one deterministic reduction per band.
  for (int b = 0; b < n_bands; ++b) {
    float partial = 0.f;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x)
      if (band_map[idx] == b) partial += hypotf(F[idx].x, F[idx].y);
    const float total = block_reduce(partial, scratch, false);
    if (threadIdx.x == 0) weights[b] = 1.0f / (powf(total / band_counts[b], gamma) + eps0);
  }
  __syncthreads();

  // The weighted spectrum, then its inverse column transform into G.
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const float wb = weights[band_map[idx]];
    F[idx] = weight_kernel ? make_float2(wb, 0.f) : make_float2(F[idx].x * wb, F[idx].y * wb);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int h = idx / W, kw = idx - h * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int kh = 0; kh < H; ++kh) {
      const float c = cos_h[kh * H + h], s = sin_h[kh * H + h];
      const float2 f = F[kh * W + kw];
      acc = twiddle_mac(acc, f, c, s);
    }
    G[idx] = acc;
  }
  __syncthreads();
  // Inverse row transform and |.|: the unnormalised map, over X.
  const float inv_n = 1.0f / (float)n;
  float local_sq = 0.f, local_max = 0.f;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int h = idx / W, w = idx - h * W;
    float2 acc = make_float2(0.f, 0.f);
    for (int kw = 0; kw < W; ++kw) {
      const float c = cos_w[kw * W + w], s = sin_w[kw * W + w];
      const float2 g = G[h * W + kw];
      acc = twiddle_mac(acc, g, c, s);
    }
    const float m = hypotf(acc.x * inv_n, acc.y * inv_n);
    X[idx] = m;
    local_sq += m * m;
    local_max = fmaxf(local_max, m);
  }
  // Normalisation: 0 = none, 1 = rms, 2 = max.
  float scale = 1.f;
  if (normalize == 1) scale = sqrtf(block_reduce(local_sq, scratch, false) * inv_n);
  if (normalize == 2) scale = block_reduce(local_max, scratch, true);
  __syncthreads();

  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    const float map = normalize == 0 ? X[idx] : (scale > 0.f ? X[idx] / scale : 1.0f);
    const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
    if (store_noise) noise_out[el] = z;
    out[el] = x[el] * signal + (map * z) * noise_scale;
  }
}
