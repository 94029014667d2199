// The backward of MANI re-noising for planes larger than 64 x 64 (mani_noise_large.cu): cuFFT does
// the transforms (called by manipure_fast/ops/cuda_ops.py), and these two kernels do everything
// between them, one thread block per (image, channel) plane. The same semantics and launches as
// kernels/triton/mani_noise_large_backward.py, and the gradients of mani_noise_backward.cu over
// half spectra (N = H W, g_map = sqrt(1 - abar) grad z):
//
//   F = rfft2(x); mani_band_weights_kernel      the forward recomputed, G beside F, with each
//   (store_stats); Y = irfft2(G)                plane's band means and weights stored
//   mani_map_gradient_kernel                    g_z = sqrt(1 - abar) W grad; g_Y / N, with g_Y the
//                                               normalisation's gradient through |.|
//   g_G = rfft2(g_Y / N)                        Hermitian: g_Y is real
//   mani_spectrum_gradient_kernel               the band sums of share Re(g_G conj F) (or of
//                                               share Re(g_G)): the conjugate mirror of a
//                                               coefficient is in its band with the same term;
//                                               g_F = w[band] g_G + mean_grad F / |F|, Hermitian
//   g_x = sqrt(abar) grad + N irfft2(g_F)       the unnormalised inverse
#include "mani_stages.cuh"

using manipure::band_sums;
using manipure::band_weight_slope;
using manipure::block_reduce;
using manipure::map_scale;
using manipure::normalisation_gradient;
using manipure::normalised_map;
using manipure::spectrum_gradient;

// Dynamic shared memory: 32 floats of reduction scratch. Writes g_noise (noise_grad) and, unless
// detach_map, g_shaped = g_Y / N.
extern "C" __global__ void mani_map_gradient_kernel(
    const float* __restrict__ grad, const float* __restrict__ noise,
    const float* __restrict__ shaped,  // Y = irfft2(G), [planes, n]
    float* __restrict__ g_shaped, float* __restrict__ g_noise, int n,
    int normalize,  // 0 none, 1 rms, 2 max
    float noise_scale, int detach_map, int noise_grad) {
  extern __shared__ float smem_f[];
  const long long base = (long long)blockIdx.x * n;
  const float inv_n = 1.0f / (float)n;
  const float scale = map_scale(shaped + base, n, normalize, smem_f);
  const bool live = scale > 0.f;

  float local_dot = 0.f, local_at_max = 0.f;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    const float s = fabsf(shaped[el]);
    if (noise_grad) g_noise[el] = noise_scale * normalised_map(s, normalize, scale) * grad[el];
    local_dot += noise_scale * grad[el] * noise[el] * s;
    local_at_max += (normalize == 2 && s == scale) ? 1.f : 0.f;
  }
  if (detach_map) return;
  const float dot = block_reduce(local_dot, smem_f, false);
  const float n_max = fmaxf(block_reduce(local_at_max, smem_f, false), 1.f);
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    const float g_map = noise_scale * grad[el] * noise[el];
    g_shaped[el] = normalisation_gradient(shaped[el], g_map, normalize, live, scale, dot, n_max, inv_n) * inv_n;
  }
}

// Dynamic shared memory: 32 floats of reduction scratch, then n_bands weights and n_bands mean
// gradients.
extern "C" __global__ void mani_spectrum_gradient_kernel(
    const float2* __restrict__ g_spectrum,  // [planes, n_coefficients], g_G's half spectra
    const float2* __restrict__ spectrum,    // [planes, n_coefficients], F's
    float2* __restrict__ g_out,             // [planes, n_coefficients], g_F
    const float* __restrict__ stats,        // [planes, 2, n_bands]: mani_band_weights_kernel's
    const int* __restrict__ band,           // [n_coefficients], band of each coefficient
    const float* __restrict__ share,        // [n_coefficients], multiplicity / band size
    int n_coefficients, int n_bands, float gamma, int weight_kernel) {
  extern __shared__ float smem_f[];
  float* scratch = smem_f;
  float* weights = smem_f + 32;
  float* mean_grads = weights + n_bands;
  const long long base = (long long)blockIdx.x * n_coefficients;
  const float* means = stats + (long long)blockIdx.x * 2 * n_bands;
  for (int b = threadIdx.x; b < n_bands; b += blockDim.x) weights[b] = means[n_bands + b];
  __syncthreads();

  // mean_grad_b = dw_b/dM_b sum_b(share g_w): the shares already divide by the band's size.
  band_sums(
      band, n_coefficients, n_bands, scratch,
      [&](int idx) {
        const float2 g = g_spectrum[base + idx];
        if (weight_kernel) return g.x * share[idx];
        const float2 f = spectrum[base + idx];
        return (g.x * f.x + g.y * f.y) * share[idx];
      },
      [&](int b, float total) {
        if (threadIdx.x == 0) mean_grads[b] = band_weight_slope(means[b], weights[b], gamma) * total;
      });

  for (int idx = threadIdx.x; idx < n_coefficients; idx += blockDim.x) {
    const int b = band[idx];
    g_out[base + idx] =
        spectrum_gradient(spectrum[base + idx], g_spectrum[base + idx], mean_grads[b], weights[b], weight_kernel);
  }
}
