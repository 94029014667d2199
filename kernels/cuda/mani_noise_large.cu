// MANI re-noising (SPEC §1) for planes larger than 64 x 64 (ImageNet's 256 x 256): cuFFT does the
// two transforms (torch.fft.rfft2 / irfft2, called by manipure_fast/ops/cuda_ops.py), and these two
// kernels do everything between and after them, one thread block per (image, channel) plane. The
// same semantics, and the same four-launch shape, as kernels/triton/mani_noise_large.py:
//
//   F = rfft2(x)                         the H x (W/2 + 1) half spectrum
//   mani_band_weights_kernel             M_b = sum over band b of share |F| (share = the
//                                        coefficient's multiplicity in the full spectrum over the
//                                        band's size), w_b = 1 / (M_b^gamma + eps0),
//                                        G = w[band] F ("spectral") or w[band] ("kernel")
//   Y = irfft2(G)                        real: G is Hermitian (the band map is symmetric in k -> -k)
//   mani_inject_kernel                   W = |Y| normalised per plane (rms, max or none; an
//                                        all-zero map becomes 1), x_t = sqrt(abar) x + sqrt(1-abar) W z
//
// Band sums are per-thread partials for up to kBandsPerSweep bands at a time, then one
// deterministic block reduction per band (mani_stages.cuh band_sums): the result does not depend
// on scheduling. The backward (mani_noise_large_backward.cu) recomputes the forward with these
// kernels, with the band means and weights stored.
#include "mani_stages.cuh"

using manipure::band_sums;
using manipure::map_scale;
using manipure::inject_at;
using manipure::normalised_map;

// Dynamic shared memory: 32 floats of reduction scratch, then n_bands weights.
extern "C" __global__ void mani_band_weights_kernel(
    const float2* __restrict__ spectrum,  // [planes, n_coefficients], the half spectra
    float2* __restrict__ weighted,        // [planes, n_coefficients], G
    float* __restrict__ stats,            // [planes, 2, n_bands]: the means and weights (store_stats)
    const int* __restrict__ band,         // [n_coefficients], band of each coefficient
    const float* __restrict__ share,      // [n_coefficients], multiplicity / band size
    int n_coefficients, int n_bands, float gamma, float eps0, int weight_kernel, int store_stats) {
  extern __shared__ float smem_f[];
  float* scratch = smem_f;
  float* weights = smem_f + 32;
  const long long base = (long long)blockIdx.x * n_coefficients;

  band_sums(
      band, n_coefficients, n_bands, scratch,
      [&](int idx) {
        const float2 f = spectrum[base + idx];
        return hypotf(f.x, f.y) * share[idx];
      },
      [&](int b, float mean) {
        if (threadIdx.x != 0) return;
        // powf(0, gamma) = 0 for gamma > 0, as torch.pow: an all-zero band weighs 1 / eps0.
        weights[b] = 1.0f / (powf(mean, gamma) + eps0);
        if (store_stats) {
          stats[(long long)blockIdx.x * 2 * n_bands + b] = mean;
          stats[(long long)blockIdx.x * 2 * n_bands + n_bands + b] = weights[b];
        }
      });

  for (int idx = threadIdx.x; idx < n_coefficients; idx += blockDim.x) {
    const float wb = weights[band[idx]];
    const float2 f = spectrum[base + idx];
    weighted[base + idx] = weight_kernel ? make_float2(wb, 0.f) : make_float2(f.x * wb, f.y * wb);
  }
}

// Dynamic shared memory: 32 floats of reduction scratch.
extern "C" __global__ void mani_inject_kernel(
    const float* __restrict__ x, const float* __restrict__ shaped,  // Y = irfft2(G), [planes, n]
    const float* __restrict__ noise, float* __restrict__ out, float* __restrict__ noise_out,
    const long long* __restrict__ rng_state, int n, int normalize,  // 0 none, 1 rms, 2 max
    float signal, float noise_scale, int has_noise, int store_noise) {
  extern __shared__ float smem_f[];
  const long long base = (long long)blockIdx.x * n;
  const float scale = map_scale(shaped + base, n, normalize, smem_f);

  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    inject_at(el, normalised_map(fabsf(shaped[el]), normalize, scale), x, noise, out, noise_out, rng_state, signal,
              noise_scale, has_noise, store_noise);
  }
}
