// The exchange's stages for planes up to 32 x 32 (CIFAR's) on the tensor cores, shared by
// exchange_update.cu and exchange_update_backward.cu, so that the backward recomputes exactly what
// the forward computed. They are exchange_stages.cuh's stages, each a pair of real 3xTF32 products
// of padded [32 x 32] tiles (tensor_core_dft.cuh), zero outside the plane and the band, so the
// padding adds nothing. At CIFAR the FMA loops' 341 K multiply-adds per plane need 83% of the
// SIMT peak to meet T1 (docs/kernels.md). Include guards rather than #pragma once, because the JIT
// loader inlines this file into each kernel source.
#ifndef MANIPURE_EXCHANGE_TENSOR_CORE_CUH
#define MANIPURE_EXCHANGE_TENSOR_CORE_CUH

#include "exchange_stages.cuh"
#include "tensor_core_dft.cuh"

namespace manipure {

// Both kernels' dynamic shared memory on this path: twelve tiles (cuda_ops.exchange_shared_bytes
// and exchange_backward_shared_bytes agree).
constexpr int kExchangeTiles = 12;

// The twelve tiles, by what they hold first. The two pixel images p and q start in Fpr and Fpi,
// which F_p then overwrites; the G pairs are work space, [H x KW] or [KH x KW].
struct ExchangeTiles {
  float *Ch, *Sh, *Cw, *Sw;      // the band tables, [KH x H] and [KW x W]
  float *Fpr, *Fpi, *Fqr, *Fqi;  // F_p (over p, q) and F_q, [KH x KW]
  float *Gpr, *Gpi, *Gqr, *Gqi;  // the row transforms, [H x KW]; later stages' work pairs
};

__device__ __forceinline__ ExchangeTiles exchange_tiles(float* smem) {
  float* t[kExchangeTiles];
  for (int i = 0; i < kExchangeTiles; ++i) t[i] = smem + i * kTileFloats;
  return ExchangeTiles{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11]};
}

// The products' extents: the row transforms onto the band columns, the column transforms onto
// the band rows, and the inverse column transform back to the plane's rows. Each covers only the
// band where it has one: KW of 32 columns at CIFAR's R = 10 is 21, rounded up to 24.
__device__ __forceinline__ ProductExtent rows_pass(int H, int W, int KW) { return ProductExtent{H, KW, W}; }
__device__ __forceinline__ ProductExtent columns_pass(int H, int KH, int KW) { return ProductExtent{KH, KW, H}; }
__device__ __forceinline__ ProductExtent inverse_columns_pass(int H, int KH, int KW) {
  return ProductExtent{H, KW, KH};
}

// Loads the pixel images and the band tables, then both band spectra: G = X (Cw - i Sw)^T, then
// F = (Ch - i Sh) G, with Re F = Ch Gr + Sh Gi and Im F = Ch Gi - Sh Gr. F_p lands in
// (Fpr, Fpi), F_q in (Fqr, Fqi). Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void tensor_core_band_spectra(
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, long long base,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w, int H, int W, int KH,
    int KW, const ExchangeCoefficients& k, int has_eps_ref, const ExchangeTiles& t) {
  float *P = t.Fpr, *Q = t.Fpi;
  for (int idx = threadIdx.x; idx < kTileSide * kTileSide; idx += blockDim.x) {
    const int r = idx / kTileSide, c = idx - r * kTileSide, e = r * kTileStride + c;
    const bool pixel = r < H && c < W;
    const long long el = base + (long long)r * W + c;
    P[e] = pixel ? to_pixels(predicted_x0(x_t, eps, el, k)) : 0.f;
    Q[e] = pixel ? to_pixels(reference_x0(ref_t, eps_ref, el, has_eps_ref, k)) : 0.f;
    t.Ch[e] = r < KH && c < H ? cos_h[r * H + c] : 0.f;
    t.Sh[e] = r < KH && c < H ? sin_h[r * H + c] : 0.f;
    t.Cw[e] = r < KW && c < W ? cos_w[r * W + c] : 0.f;
    t.Sw[e] = r < KW && c < W ? sin_w[r * W + c] : 0.f;
  }
  __syncthreads();
  complex_tile_product<false, true>(P, nullptr, t.Cw, t.Sw, 1.f, 0.f, -1.f, 0.f, t.Gpr, t.Gpi, rows_pass(H, W, KW));
  complex_tile_product<false, true>(Q, nullptr, t.Cw, t.Sw, 1.f, 0.f, -1.f, 0.f, t.Gqr, t.Gqi, rows_pass(H, W, KW));
  complex_tile_product(t.Ch, t.Sh, t.Gpr, t.Gpi, 1.f, 1.f, 1.f, -1.f, t.Fpr, t.Fpi, columns_pass(H, KH, KW));
  complex_tile_product(t.Ch, t.Sh, t.Gqr, t.Gqi, 1.f, 1.f, 1.f, -1.f, t.Fqr, t.Fqi, columns_pass(H, KH, KW));
}

// Delta = F_out - F_p inside the discs, 0 outside, into (Dr, Di) on the band; Dr, Di may be
// (Fqr, Fqi). Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void tensor_core_exchange_delta(const ExchangeTiles& t, const float* amp_mask,
                                                           const float* phase_mask, int KH, int KW,
                                                           int phase_project, float delta, float* Dr, float* Di) {
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const int i = idx / KW, e = i * kTileStride + (idx - i * KW);
    const float2 d = exchange_mix(make_float2(t.Fpr[e], t.Fpi[e]), make_float2(t.Fqr[e], t.Fqi[e]),
                                  amp_mask[idx] != 0.f, phase_mask[idx] != 0.f, phase_project, delta)
                         .delta;
    Dr[e] = d.x;
    Di[e] = d.y;
  }
  __syncthreads();
}

// E = (Ch + i Sh)^T X, the band's inverse column transform of X = (Xr, Xi) [KH x KW] into
// (Er, Ei) [H x KW]. Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void tensor_core_inverse_columns(const ExchangeTiles& t, const float* Xr,
                                                            const float* Xi, float* Er, float* Ei, int H,
                                                            int KH, int KW) {
  complex_tile_product<true, false>(t.Ch, t.Sh, Xr, Xi, 1.f, -1.f, 1.f, 1.f, Er, Ei, inverse_columns_pass(H, KH, KW));
}

// The band's inverse row transform of E [H x KW] on the warp's 16 x 8 pixel tile at (m0, n0):
// re += Er Cw - Ei Sw and, when `imaginary`, im += Er Sw + Ei Cw (unnormalised), in the lane's
// fragment layout (fragment_row, fragment_col). Every lane of the warp must call it.
__device__ __forceinline__ void tensor_core_inverse_row_tile(float (&re)[4], float (&im)[4], const float* Er,
                                                             const float* Ei, const ExchangeTiles& t, int m0,
                                                             int n0, int KW, bool imaginary) {
  tile_product_3xtf32(re, Er, t.Cw, m0, n0, KW, 1.f);
  tile_product_3xtf32(re, Ei, t.Sw, m0, n0, KW, -1.f);
  if (imaginary) {
    tile_product_3xtf32(im, Er, t.Sw, m0, n0, KW, 1.f);
    tile_product_3xtf32(im, Ei, t.Cw, m0, n0, KW, 1.f);
  }
}

}  // namespace manipure

#endif  // MANIPURE_EXCHANGE_TENSOR_CORE_CUH
