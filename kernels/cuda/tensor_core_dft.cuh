// 2-D DFTs of planes up to 32 x 32 as matrix products on the tensor cores, at fp32 accuracy: each
// product is three TF32 products (3xTF32: a = big + small, both rounded to TF32, and
// a b ~ small_a big_b + big_a small_b + big_a big_b; only small_a small_b, about 2^-22 of a b, is
// dropped). bench/precision_emulation.py measured the same arithmetic on the Triton kernels: as
// accurate as fp32 FMAs, where plain TF32 is off by about 1e-3.
//
// The matrices are [32 x 32] fp32 tiles in shared memory, zero outside the plane, with row stride
// kTileStride; a product's 8 output tiles of 16 x 8 go to the block's warps. Include guards rather
// than #pragma once, because the JIT loader inlines this file into each kernel source.
#ifndef MANIPURE_TENSOR_CORE_DFT_CUH
#define MANIPURE_TENSOR_CORE_DFT_CUH

#include "manipure_common.cuh"

namespace manipure {

constexpr int kTileSide = 32;  // the largest plane side of the tensor-core path
// 36: the A-fragment reads of a warp, rows g (0-7) and columns t (0-3), fall in 32 distinct banks.
constexpr int kTileStride = kTileSide + 4;
constexpr int kTileFloats = kTileSide * kTileStride;
constexpr int kOutputTiles = (kTileSide / 16) * (kTileSide / 8);  // 16 x 8 tiles of one product

// One TF32 operand pair: the value's nearest TF32 and the TF32 nearest to what that leaves.
struct SplitTf32 {
  unsigned int big, small;
};

__device__ __forceinline__ SplitTf32 split_tf32(float v) {
  const unsigned int big = tf32_round_bits(v);
  return SplitTf32{big, tf32_round_bits(v - __uint_as_float(big))};
}

// acc += sign * (A B)[m0 : m0 + 16, n0 : n0 + 8] over k < kTileSide, in 3xTF32; A and B are
// padded tiles, read transposed (A^T, B^T) when kTransposeA or kTransposeB. acc holds the lane's
// four D elements (manipure_common.cuh's mma layout). Every lane of the warp must call it.
template <bool kTransposeA = false, bool kTransposeB = false>
__device__ __forceinline__ void tile_product_3xtf32(float (&acc)[4], const float* A, const float* B, int m0,
                                                    int n0, float sign) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  auto a_at = [&](int row, int k) { return sign * (kTransposeA ? A[k * kTileStride + row] : A[row * kTileStride + k]); };
  auto b_at = [&](int k, int col) { return kTransposeB ? B[col * kTileStride + k] : B[k * kTileStride + col]; };
  // Unrolled by 2, not 4: the three mma of a step accumulate into acc in turn anyway, and the
  // full unroll hoisted every step's loads, which took exchange_update_kernel from 64 registers
  // to 129 (one block per SM at 256 threads) and mani_noise_kernel from 48 to 69 (sm_90 ptxas).
#pragma unroll 2
  for (int k0 = 0; k0 < kTileSide; k0 += 8) {
    const SplitTf32 a0 = split_tf32(a_at(m0 + g, k0 + t)), a1 = split_tf32(a_at(m0 + g + 8, k0 + t)),
                    a2 = split_tf32(a_at(m0 + g, k0 + t + 4)), a3 = split_tf32(a_at(m0 + g + 8, k0 + t + 4));
    const SplitTf32 b0 = split_tf32(b_at(k0 + t, n0 + g)), b1 = split_tf32(b_at(k0 + t + 4, n0 + g));
    const unsigned int a_big[4] = {a0.big, a1.big, a2.big, a3.big};
    const unsigned int a_small[4] = {a0.small, a1.small, a2.small, a3.small};
    const unsigned int b_big[2] = {b0.big, b1.big}, b_small[2] = {b0.small, b1.small};
    // The small terms first, while the sum is small.
    mma_tf32_m16n8k8(acc, a_small, b_big);
    mma_tf32_m16n8k8(acc, a_big, b_small);
    mma_tf32_m16n8k8(acc, a_big, b_big);
  }
}

// The row and column of element q (0-3) of the lane's D fragment, within the tile at (m0, n0).
__device__ __forceinline__ int fragment_row(int m0, int q) { return m0 + ((threadIdx.x & 31) >> 2) + (q >> 1) * 8; }
__device__ __forceinline__ int fragment_col(int n0, int q) { return n0 + 2 * (threadIdx.x & 3) + (q & 1); }

// The origin of output tile `tile` (0 to kOutputTiles - 1) of a [32 x 32] product.
__device__ __forceinline__ int tile_row(int tile) { return (tile / (kTileSide / 8)) * 16; }
__device__ __forceinline__ int tile_col(int tile) { return (tile % (kTileSide / 8)) * 8; }

// Two products at once, C1 = s11 A1 B1 + s12 A2 B2 and C2 = s21 A1 B2 + s22 A2 B1: the shape of a
// complex product's real and imaginary parts (re = A1 B1 -/+ A2 B2, im = A1 B2 +/- A2 B1). A2 may
// be null for a real A1, which drops the A2 terms. The operands are read transposed as in
// tile_product_3xtf32. Every thread of the block must call it; it returns synchronised.
template <bool kTransposeA = false, bool kTransposeB = false>
__device__ __forceinline__ void complex_tile_product(const float* A1, const float* A2, const float* B1,
                                                     const float* B2, float s11, float s12, float s21, float s22,
                                                     float* C1, float* C2) {
  for (int tile = threadIdx.x >> 5; tile < kOutputTiles; tile += blockDim.x >> 5) {
    const int m0 = tile_row(tile), n0 = tile_col(tile);
    float c1[4] = {0.f, 0.f, 0.f, 0.f}, c2[4] = {0.f, 0.f, 0.f, 0.f};
    tile_product_3xtf32<kTransposeA, kTransposeB>(c1, A1, B1, m0, n0, s11);
    tile_product_3xtf32<kTransposeA, kTransposeB>(c2, A1, B2, m0, n0, s21);
    if (A2 != nullptr) {
      tile_product_3xtf32<kTransposeA, kTransposeB>(c1, A2, B2, m0, n0, s12);
      tile_product_3xtf32<kTransposeA, kTransposeB>(c2, A2, B1, m0, n0, s22);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int e = fragment_row(m0, q) * kTileStride + fragment_col(n0, q);
      C1[e] = c1[q];
      C2[e] = c2[q];
    }
  }
  __syncthreads();
}

}  // namespace manipure

#endif  // MANIPURE_TENSOR_CORE_DFT_CUH
