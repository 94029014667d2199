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

// ---- half the W band --------------------------------------------------------------------------
// Where Delta is Hermitian (exchanged_image_is_real: no Nyquist tie in the band), so that y is
// real, the path holds only the band's non-negative W frequencies, the first KW/2 + 1 columns in FFT
// order (11 of 21 at R = 10, which the products round up to 16 rather than 24), as the Triton
// exchange does. The W band tables are loaded with the other columns' rows zero, so every product
// leaves those columns zero; Delta takes each held column's multiplicity in the whole band (1 at
// frequency 0, 2 elsewhere: held_column_weight), so y's inverse rows sum the whole band's real
// part, and the backward's g_Delta takes it too (y depends on Delta only through the weighted
// sum). MANIPURE_WHOLE_W_BAND=1 holds every column, as before: bench/tune_cuda.py times it.
#ifndef MANIPURE_WHOLE_W_BAND
#define MANIPURE_WHOLE_W_BAND 0
#endif

// The band columns the path holds: KW/2 + 1 or all KW (above). The half band takes y real, so
// MANIPURE_ALWAYS_COMPLEX_Y holds the whole band too.
__device__ __forceinline__ int tensor_core_band_columns(int H, int W, int KH, int KW) {
  const bool half = !MANIPURE_WHOLE_W_BAND && !MANIPURE_ALWAYS_COMPLEX_Y && exchanged_image_is_real(H, W, KH, KW);
  return half ? KW / 2 + 1 : KW;
}

// Held column j's (j < KW_held) multiplicity in the whole band: 1 where the whole band is held
// (KW_held == KW) and at frequency 0, 2 for the other held columns (j and its mirror KW - j).
__device__ __forceinline__ float held_column_weight(int j, int KW_held, int KW) {
  return KW_held == KW || j == 0 ? 1.f : 2.f;
}

// The products' extents: the row transforms onto the band columns, the column transforms onto
// the band rows, and the inverse column transform back to the plane's rows. Each covers only the
// band where it has one: KW of 32 columns at CIFAR's R = 10 is 21, rounded up to 24; its held
// half (KW the callers pass), 11, rounded up to 16.
__device__ __forceinline__ ProductExtent rows_pass(int H, int W, int KW) { return ProductExtent{H, KW, W}; }
__device__ __forceinline__ ProductExtent columns_pass(int H, int KH, int KW) { return ProductExtent{KH, KW, H}; }
__device__ __forceinline__ ProductExtent inverse_columns_pass(int H, int KH, int KW) {
  return ProductExtent{H, KW, KH};
}

// Loads the pixel images and the band tables (the W band's first KW rows: its held columns), then
// both band spectra: G = X (Cw - i Sw)^T, then F = (Ch - i Sh) G, with Re F = Ch Gr + Sh Gi and
// Im F = Ch Gi - Sh Gr. F_p lands in (Fpr, Fpi), F_q in (Fqr, Fqi), zero past the held columns.
// Every thread of the block must call it; it returns synchronised.
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

// Delta = F_out - F_p inside the discs, 0 outside, into (Dr, Di) on the KW_held held columns of
// the band (KW in all, the masks' width), each times its held_column_weight; Dr, Di may be
// (Fqr, Fqi). Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void tensor_core_exchange_delta(const ExchangeTiles& t, const float* amp_mask,
                                                           const float* phase_mask, int KH, int KW_held, int KW,
                                                           int phase_project, float delta, float* Dr, float* Di) {
  for (int idx = threadIdx.x; idx < KH * KW_held; idx += blockDim.x) {
    const int i = idx / KW_held, j = idx - i * KW_held, e = i * kTileStride + j;
    const float2 d = exchange_mix(make_float2(t.Fpr[e], t.Fpi[e]), make_float2(t.Fqr[e], t.Fqi[e]),
                                  amp_mask[i * KW + j] != 0.f, phase_mask[i * KW + j] != 0.f, phase_project, delta)
                         .delta;
    const float weight = held_column_weight(j, KW_held, KW);
    Dr[e] = d.x * weight;
    Di[e] = d.y * weight;
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

// The forward's stages up to E, which the backward recomputes: the band columns held
// (tensor_core_band_columns, returned), both band spectra, Delta into (Dr, Di) (the forward's F_q
// pair, or the backward's Gq, which keeps F_q for the gradient), and E = (Ch + i Sh)^T Delta into
// the Gp pair. Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ int tensor_core_inverse_columns_of_delta(
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, long long base,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w, const float* amp_mask,
    const float* phase_mask, int H, int W, int KH, int KW, const ExchangeCoefficients& k, int has_eps_ref,
    int phase_project, const ExchangeTiles& t, float* Dr, float* Di) {
  const int KW_held = tensor_core_band_columns(H, W, KH, KW);
  tensor_core_band_spectra(x_t, eps, ref_t, eps_ref, base, cos_h, sin_h, cos_w, sin_w, H, W, KH, KW_held, k,
                           has_eps_ref, t);
  tensor_core_exchange_delta(t, amp_mask, phase_mask, KH, KW_held, KW, phase_project, k.delta, Dr, Di);
  tensor_core_inverse_columns(t, Dr, Di, t.Gpr, t.Gpi, H, KH, KW_held);
  return KW_held;
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
