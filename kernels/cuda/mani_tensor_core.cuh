// MANI's stages for planes up to 32 x 32 (CIFAR's) on the tensor cores, shared by mani_noise.cu
// and mani_noise_backward.cu, so that the backward recomputes exactly what the forward computed.
// They are mani_stages.cuh's stages, each a pair of real 3xTF32 products of padded [32 x 32] tiles
// (tensor_core_dft.cuh), zero outside the plane, so the padding adds nothing. At 32 x 32 the FMA
// loops' 393 K multiply-adds per plane are more than fp32 FMAs can do within T3 (docs/kernels.md).
// Include guards rather than #pragma once, because the JIT loader inlines this file into each
// kernel source.
#ifndef MANIPURE_MANI_TENSOR_CORE_CUH
#define MANIPURE_MANI_TENSOR_CORE_CUH

#include "mani_stages.cuh"
#include "tensor_core_dft.cuh"

namespace manipure {

// The forward's tiles: the weighted spectrum P is formed over F. The backward keeps F for its
// gradient, so P has a pair of its own (cuda_ops.mani_shared_bytes and
// mani_backward_shared_bytes agree).
constexpr int kManiForwardTiles = 9;
constexpr int kManiBackwardTiles = 11;
static_assert(kManiForwardTiles + 2 == kManiBackwardTiles, "the backward adds the weighted spectrum's pair");

// The tiles, by what they hold. X holds the plane, then the signed map Y / N (and the backward's
// g_Y); the G pair is the row transforms' and inverse column transforms' work space.
struct ManiTiles {
  float *X, *Cw, *Sw, *Ch, *Sh;  // the plane; the full DFT tables, [W x W] and [H x H]
  float *Gr, *Gi, *Fr, *Fi;      // work space; the spectrum F
  float *Pr, *Pi;                // the weighted spectrum, later the backward's g_G and g_F
};

__device__ __forceinline__ ManiTiles mani_tiles(float* smem, bool weighted_over_spectrum) {
  float* t[kManiBackwardTiles];
  for (int i = 0; i < kManiBackwardTiles; ++i) t[i] = smem + i * kTileFloats;
  return weighted_over_spectrum ? ManiTiles{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[7], t[8]}
                                : ManiTiles{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10]};
}

// ---- half the W spectrum ----------------------------------------------------------------------
// The path holds the W frequencies 0..W/2 only: K = W/2 + 1 columns (17 of 32, which the products
// round up to 24). x is real, so F[-kh][-kw] = conj F[kh][kw]; the band map is symmetric under
// k -> -k, so the weighted spectrum is Hermitian too, and so is the backward's g_F (the DFT of the
// real g_Y, and g_|F| F/|F| with a symmetric g_|F|). So the band sums count each column with its
// multiplicity in the whole spectrum (once at 0 and at W/2, twice between), and the inverse of
// such a spectrum is the real part of its half sum with the coefficients weighted the same way
// (tensor_core_real_inverse's callers weight them). By count at 32 x 32 that is 864 mma.sync per
// forward where the whole width took 1,152.
__device__ __forceinline__ int half_spectrum_columns(int W) { return W / 2 + 1; }
__device__ __forceinline__ float column_multiplicity(int kw, int W) { return kw == 0 || 2 * kw == W ? 1.f : 2.f; }

// The spectrum of the real plane in `plane` (a tile, zero outside the plane) on the half_spectrum_columns:
// G = V (Cw - i Sw), then F = (Ch - i Sh) G, with Re F = Ch Gr + Sh Gi and Im F = Ch Gi - Sh Gr (the
// full tables are symmetric, so no transposes). Into (re, im); the columns from K up to the
// products' rounding hold other frequencies, which no caller reads. Every thread of the block must
// call it; it returns synchronised.
__device__ __forceinline__ void tensor_core_real_spectrum(const ManiTiles& t, const float* plane, float* re,
                                                          float* im, int H, int W) {
  const int K = half_spectrum_columns(W);
  complex_tile_product(plane, nullptr, t.Cw, t.Sw, 1.f, 0.f, -1.f, 0.f, t.Gr, t.Gi, ProductExtent{H, K, W});
  complex_tile_product(t.Ch, t.Sh, t.Gr, t.Gi, 1.f, 1.f, 1.f, -1.f, re, im, ProductExtent{H, K, H});
}

// body(h, w, v) for every pixel of the plane, with v = Re(sum_k e^{+i theta n} S[k]) unnormalised,
// S = (re, im) on the half_spectrum_columns, each weighted by its column_multiplicity and zero from
// K on: Q = (Ch + i Sh) S column-wise into the G pair (Re Q = Ch Sr - Sh Si, Im Q = Ch Si + Sh Sr),
// then Re(Q (Cw + i Sw)) = Qr Cw - Qi Sw, taken from the accumulators. Every thread of the block
// must call it; it does not return synchronised.
template <typename Body>
__device__ __forceinline__ void tensor_core_real_inverse(const ManiTiles& t, const float* re, const float* im,
                                                         int H, int W, Body body) {
  const int K = half_spectrum_columns(W);
  complex_tile_product(t.Ch, t.Sh, re, im, 1.f, -1.f, 1.f, 1.f, t.Gr, t.Gi, ProductExtent{H, K, H});
  for_each_output_tile(H, W, [&](int m0, int n0) {
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    tile_product_3xtf32(v, t.Gr, t.Cw, m0, n0, K, 1.f);
    tile_product_3xtf32(v, t.Gi, t.Sw, m0, n0, K, -1.f);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h = fragment_row(m0, q), w = fragment_col(n0, q);
      if (h < H && w < W) body(h, w, v[q]);
    }
  });
}

// The forward up to the map, for both kernels: loads the plane and the tables, takes F, the band
// means (into `means`, when given) and weights, P = w[band] F ("spectral") or w[band] ("kernel"),
// and the signed map Y / N into X; adds the thread's |Y| / N values to sum_sq and max. Every
// thread of the block must call it; it does not return synchronised.
__device__ __forceinline__ void tensor_core_signed_map(
    const ManiTiles& t, const float* x, long long base, const float* cos_h, const float* sin_h,
    const float* cos_w, const float* sin_w, const int* band_map, const float* band_counts, int H, int W,
    int n_bands, float gamma, float eps0, int weight_kernel, float* scratch, float* means, float* weights,
    float& sum_sq, float& max) {
  // The plane and the twiddle tables, zero outside the plane: the products then leave every
  // element outside it zero, and the padding adds nothing.
  for (int idx = threadIdx.x; idx < kTileSide * kTileSide; idx += blockDim.x) {
    const int r = idx / kTileSide, c = idx - r * kTileSide, e = r * kTileStride + c;
    t.X[e] = r < H && c < W ? x[base + r * W + c] : 0.f;
    t.Cw[e] = r < W && c < W ? cos_w[r * W + c] : 0.f;
    t.Sw[e] = r < W && c < W ? sin_w[r * W + c] : 0.f;
    t.Ch[e] = r < H && c < H ? cos_h[r * H + c] : 0.f;
    t.Sh[e] = r < H && c < H ? sin_h[r * H + c] : 0.f;
  }
  __syncthreads();
  tensor_core_real_spectrum(t, t.X, t.Fr, t.Fi, H, W);
  const int n = H * W, K = half_spectrum_columns(W);
  band_weights_of(
      [&](int idx) {
        const int kh = idx / K, kw = idx - kh * K, e = kh * kTileStride + kw;
        return column_multiplicity(kw, W) * hypotf(t.Fr[e], t.Fi[e]);
      },
      [&](int idx) {
        const int kh = idx / K;
        return band_map[kh * W + (idx - kh * K)];
      },
      band_counts, H * K, n_bands, gamma, eps0, scratch, means, weights);
  // P over the whole tile, weighted by the column multiplicities for the inverse, zero outside
  // the half spectrum: in the backward its pair starts unwritten.
  for (int idx = threadIdx.x; idx < kTileSide * kTileSide; idx += blockDim.x) {
    const int r = idx / kTileSide, c = idx - r * kTileSide, e = r * kTileStride + c;
    float pr = 0.f, pi = 0.f;
    if (r < H && c < K) {
      const float wb = weights[band_map[r * W + c]] * column_multiplicity(c, W);
      pr = weight_kernel ? wb : t.Fr[e] * wb;
      pi = weight_kernel ? 0.f : t.Fi[e] * wb;
    }
    t.Pr[e] = pr;
    t.Pi[e] = pi;
  }
  __syncthreads();
  const float inv_n = 1.0f / (float)n;
  tensor_core_real_inverse(t, t.Pr, t.Pi, H, W, [&](int h, int w, float v) {
    const float y = v * inv_n, s = fabsf(y);
    t.X[h * kTileStride + w] = y;
    sum_sq += s * s;
    max = fmaxf(max, s);
  });
}

}  // namespace manipure

#endif  // MANIPURE_MANI_TENSOR_CORE_CUH
