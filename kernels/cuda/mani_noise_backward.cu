// Fused backward of mani_noise (mani_noise.cu) for planes up to 64 x 64, one thread block per
// (image, channel) plane: the gradients of out = sqrt(abar) x + sqrt(1 - abar) (W z) with respect
// to x (through the intensity map W) and z, equal to autograd through
// manipure_fast.reference.mani_noise. The same algorithm as kernels/triton/mani_noise_backward.py:
//
//   recompute F = DFT(x), the band means M_b and weights w_b, Y = Re ifft2(w[band] F) (or of
//   w[band]; Y is real, see mani_noise.cu), S = |Y| and the normalisation scale; then
//   g_W = sqrt(1-abar) grad z;  g_S: rms (g_W - S <g_W,S> / (N s^2)) / s, max g_W / m minus
//   <g_W,S> / (m^2 #max) on the maxima (torch's amax shares ties), none g_W;
//   g_Y = g_S sign(Y), a real plane;  g_G = fft2(g_Y)/N;  g_w[k] = Re(g_G conj F) (spectral) or Re(g_G);
//   g_M_b = -gamma M_b^(gamma-1) w_b^2 sum_b g_w;  g_F = w[band] g_G (spectral) + g_M_b/count_b F/|F|;
//   g_x = sqrt(abar) grad + Re(sum_k e^{+i theta n} g_F[k]);  g_z = sqrt(1-abar) W grad.
// Zero where torch's derivative is zero: |.| and F/|F| at 0, a zero band mean, a constant map.
//
// Dynamic shared memory: F, G, Y [H W] float2, 32 floats of reduction scratch and 3 n_bands
// floats (means, weights, mean gradients) = 24 H W + (32 + 3 n_bands) 4 bytes. Y holds the real
// map and g_Y in its first H W floats (Ymap), then the complex g_G and g_F.
//
// Planes up to 32 x 32 (CIFAR's) take the same stages as matrix products on the tensor cores, in
// 3xTF32, with the forward's recomputation from mani_tensor_core.cuh: eleven padded tiles, then
// the same scratch and band arrays.
#include "mani_tensor_core.cuh"

using manipure::band_sums_of;
using manipure::column_multiplicity;
using manipure::half_spectrum_columns;
using manipure::kTileSide;
using manipure::band_weight_slope;
using manipure::band_weights;
using manipure::block_reduce;
using manipure::inverse_columns;
using manipure::inverse_row_real;
using manipure::kManiBackwardTiles;
using manipure::kTensorCoreMaxSide;
using manipure::kTileFloats;
using manipure::kTileStride;
using manipure::mani_tiles;
using manipure::ManiTiles;
using manipure::normalisation_gradient;
using manipure::plane_spectrum;
using manipure::spectrum_gradient;
using manipure::tensor_core_real_inverse;
using manipure::tensor_core_real_spectrum;
using manipure::tensor_core_signed_map;

namespace {

// g_G and F at one coefficient.
struct GradientAndSpectrum {
  float2 g_g, f;
};

// g_M_b for each band, from g_w[k] = Re(g_G conj F) ("spectral") or Re(g_G) ("kernel") summed over
// the band: at(idx) gives g_G and F at flat index idx < n, multiplicity(idx) how often the
// coefficient occurs in the whole spectrum (1 where the whole spectrum is held), band_of(idx) its
// band. Every thread of the block must call it; it returns synchronised.
template <typename At, typename Multiplicity, typename BandOf>
__device__ __forceinline__ void band_mean_gradients(At at, Multiplicity multiplicity, BandOf band_of,
                                                    const float* band_counts, const float* means,
                                                    const float* weights, int n, int n_bands, float gamma,
                                                    int weight_kernel, float* scratch, float* mean_grads) {
  band_sums_of(
      band_of, n, n_bands, scratch,
      [&](int idx) {
        const GradientAndSpectrum c = at(idx);
        return multiplicity(idx) * (weight_kernel ? c.g_g.x : c.g_g.x * c.f.x + c.g_g.y * c.f.y);
      },
      [&](int b, float total) {
        if (threadIdx.x == 0) mean_grads[b] = band_weight_slope(means[b], weights[b], gamma) * total / band_counts[b];
      });
}

}  // namespace

extern "C" __global__ void mani_noise_backward_kernel(
    const float* __restrict__ grad, const float* __restrict__ x, const float* __restrict__ noise,
    float* __restrict__ g_x, float* __restrict__ g_noise,
    const float* __restrict__ cos_h, const float* __restrict__ sin_h,  // [H, H]
    const float* __restrict__ cos_w, const float* __restrict__ sin_w,  // [W, W]
    const int* __restrict__ band_map,                                  // [H, W], unshifted
    const float* __restrict__ band_counts,                             // [n_bands], >= 1
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int detach_map, int noise_grad) {
  extern __shared__ float2 smem2[];
  const int n = H * W;
  const long long base = (long long)blockIdx.x * n;
  const float inv_n = 1.0f / (float)n;
  const bool tensor_cores = H <= kTensorCoreMaxSide && W <= kTensorCoreMaxSide;  // as mani_backward_shared_bytes
  // The FMA loops' arrays; the tensor-core path's tiles in their place.
  float2* F = smem2;
  float2* G = F + n;
  float2* Y = G + n;
  const ManiTiles tiles = mani_tiles(reinterpret_cast<float*>(smem2), false);
  float* scratch = tensor_cores ? tiles.X + kManiBackwardTiles * kTileFloats : reinterpret_cast<float*>(Y + n);
  float* means = scratch + 32;
  float* weights = means + n_bands;
  float* mean_grads = weights + n_bands;

  // ---- recompute the forward: F = DFT(x), the band means and weights, Y / N (signed) into `map`,
  //      and S = |Y| / N's statistics --------------------------------------------------------------
  float* map;  // the real map Y / N, then g_Y, at row stride map_stride
  int map_stride;
  float local_sq = 0.f, local_max = 0.f;
  if (tensor_cores) {
    tensor_core_signed_map(tiles, x, base, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, H, W, n_bands,
                           gamma, eps0, weight_kernel, scratch, means, weights, local_sq, local_max);
    map = tiles.X;
    map_stride = kTileStride;
  } else {
    map = reinterpret_cast<float*>(Y);
    map_stride = W;
    plane_spectrum(x + base, G, F, cos_h, sin_h, cos_w, sin_w, H, W);
    band_weights(F, band_map, band_counts, n, n_bands, gamma, eps0, scratch, means, weights);
    inverse_columns(F, weights, band_map, weight_kernel, G, cos_h, sin_h, H, W);
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const int h = idx / W, w = idx - h * W;
      map[idx] = inverse_row_real(G, h, w, cos_w, sin_w, W) * inv_n;
      const float s = fabsf(map[idx]);
      local_sq += s * s;
      local_max = fmaxf(local_max, s);
    }
  }
  __syncthreads();  // the tensor cores' map values come from other warps
  auto map_at = [&](int idx) -> float& {
    const int h = idx / W;
    return map[h * map_stride + (idx - h * W)];
  };
  // Normalisation: 0 = none, 1 = rms, 2 = max.
  float scale = 1.f;
  if (normalize == 1) scale = sqrtf(block_reduce(local_sq, scratch, false) * inv_n);
  if (normalize == 2) scale = block_reduce(local_max, scratch, true);
  const bool live = scale > 0.f;

  // ---- the noise's gradient, and the map's inner product with g_W --------------------------------
  float local_dot = 0.f, local_at_max = 0.f;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const long long el = base + idx;
    const float s = fabsf(map_at(idx));
    const float map_value = normalize == 0 ? s : (live ? s / scale : 1.0f);
    if (noise_grad) g_noise[el] = noise_scale * map_value * grad[el];
    local_dot += noise_scale * grad[el] * noise[el] * s;
    local_at_max += (normalize == 2 && s == scale) ? 1.f : 0.f;
  }
  if (detach_map) {
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) g_x[base + idx] = signal * grad[base + idx];
    return;
  }
  const float dot = block_reduce(local_dot, scratch, false);
  const float n_max = fmaxf(block_reduce(local_at_max, scratch, false), 1.f);

  // ---- g_Y = g_S sign(Y) / N, over the map (the 1/N of g_G = fft2(g_Y) / N taken here) -----------
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const float g_map = noise_scale * grad[base + idx] * noise[base + idx];
    map_at(idx) = normalisation_gradient(map_at(idx), g_map, normalize, live, scale, dot, n_max, inv_n) * inv_n;
  }
  __syncthreads();

  if (tensor_cores) {
    // ---- g_G = fft2(g_Y) / N into the P pair, on the half spectrum (mani_tensor_core.cuh); through
    //      the band weights and means; g_F over it, weighted by the column multiplicities for the
    //      inverse and zero from column K on ------------------------------------------------------
    tensor_core_real_spectrum(tiles, tiles.X, tiles.Pr, tiles.Pi, H, W);
    const int K = half_spectrum_columns(W);
    auto tile_index = [&](int idx) {  // of flat half-spectrum index idx
      const int kh = idx / K;
      return kh * kTileStride + (idx - kh * K);
    };
    band_mean_gradients(
        [&](int idx) {
          const int e = tile_index(idx);
          return GradientAndSpectrum{make_float2(tiles.Pr[e], tiles.Pi[e]), make_float2(tiles.Fr[e], tiles.Fi[e])};
        },
        [&](int idx) { return column_multiplicity(idx % K, W); },
        [&](int idx) {
          const int kh = idx / K;
          return band_map[kh * W + (idx - kh * K)];
        },
        band_counts, means, weights, H * K, n_bands, gamma, weight_kernel, scratch, mean_grads);
    for (int idx = threadIdx.x; idx < kTileSide * kTileSide; idx += blockDim.x) {
      const int r = idx / kTileSide, c = idx - r * kTileSide, e = r * kTileStride + c;
      float2 g = make_float2(0.f, 0.f);
      if (r < H && c < K) {
        const int b = band_map[r * W + c];
        g = spectrum_gradient(make_float2(tiles.Fr[e], tiles.Fi[e]), make_float2(tiles.Pr[e], tiles.Pi[e]),
                              mean_grads[b], weights[b], weight_kernel);
        const float m = column_multiplicity(c, W);
        g = make_float2(g.x * m, g.y * m);
      }
      tiles.Pr[e] = g.x;
      tiles.Pi[e] = g.y;
    }
    __syncthreads();
    // ---- g_x = sqrt(abar) grad + Re(sum_k e^{+i theta n} g_F[k]) ---------------------------------
    tensor_core_real_inverse(tiles, tiles.Pr, tiles.Pi, H, W, [&](int h, int w, float v) {
      const long long el = base + h * W + w;
      g_x[el] = signal * grad[el] + v;
    });
    return;
  }

  // ---- g_G = fft2(g_Y) / N, into Y: a real plane's spectrum. Its second pass overwrites the map,
  // which only its first pass reads. ---------------------------------------------------------------
  plane_spectrum(map, G, Y, cos_h, sin_h, cos_w, sin_w, H, W);

  // ---- through the band weights and means; g_F over Y ---------------------------------------------
  band_mean_gradients([&](int idx) { return GradientAndSpectrum{Y[idx], F[idx]}; }, [](int) { return 1.f; },
                      [&](int idx) { return band_map[idx]; }, band_counts, means, weights, n, n_bands, gamma,
                      weight_kernel, scratch, mean_grads);
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int b = band_map[idx];
    Y[idx] = spectrum_gradient(F[idx], Y[idx], mean_grads[b], weights[b], weight_kernel);
  }
  __syncthreads();

  // ---- g_x = sqrt(abar) grad + Re(sum_k e^{+i theta n} g_F[k]) ---------------------------------------
  inverse_columns(Y, nullptr, band_map, 0, G, cos_h, sin_h, H, W);
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int h = idx / W, w = idx - h * W;
    g_x[base + idx] = signal * grad[base + idx] + inverse_row_real(G, h, w, cos_w, sin_w, W);
  }
}
