// 2-D DFTs of planes up to 32 x 32 as matrix products on the tensor cores, at fp32 accuracy: each
// product is three TF32 products (3xTF32: a = big + small, both rounded to TF32, and
// a b ~ small_a big_b + big_a small_b + big_a big_b; only small_a small_b, about 2^-22 of a b, is
// dropped). bench/precision_emulation.py measured the same arithmetic on the Triton kernels: as
// accurate as fp32 FMAs, where plain TF32 is off by about 1e-3.
//
// The matrices are [32 x 32] fp32 tiles in shared memory with row stride kTileStride, zero
// outside their valid part (the plane, the band). A product covers only its valid extent,
// rounded up to the mma's 16 x 8 output tiles and steps of 8 along k: what lies beyond the valid
// part within that rounding is zero in the operands, so it comes out zero, and what lies beyond
// the rounding is neither written nor read. The output tiles go to the block's warps. Include
// guards rather than #pragma once, because the JIT loader inlines this file into each kernel
// source.
#ifndef MANIPURE_TENSOR_CORE_DFT_CUH
#define MANIPURE_TENSOR_CORE_DFT_CUH

#include "manipure_common.cuh"

namespace manipure {

constexpr int kTileSide = 32;  // the largest plane side a tile holds
// 36: the A-fragment reads of a warp, rows g (0-7) and columns t (0-3), fall in 32 distinct banks.
constexpr int kTileStride = kTileSide + 4;
constexpr int kTileFloats = kTileSide * kTileStride;

// The largest plane side the kernels send to the tensor cores (cuda_ops.TENSOR_CORE_SIDE, which
// sizes their shared memory, agrees). bench/tune_cuda.py compiles the kernels with 0, the FMA
// loops for every plane, to time the two against each other.
#ifndef MANIPURE_TENSOR_CORE_MAX_SIDE
#define MANIPURE_TENSOR_CORE_MAX_SIDE 32
#endif
constexpr int kTensorCoreMaxSide = MANIPURE_TENSOR_CORE_MAX_SIDE;
static_assert(kTensorCoreMaxSide >= 0 && kTensorCoreMaxSide <= kTileSide,
              "the tensor-core path's planes fit a tile");

// A product's valid output rows and columns, and its inner (k) extent; each at most kTileSide.
struct ProductExtent {
  int rows, cols, depth;
};

// One TF32 operand pair: the value's nearest TF32 and the TF32 nearest to what that leaves.
struct SplitTf32 {
  unsigned int big, small;
};

__device__ __forceinline__ SplitTf32 split_tf32(float v) {
  const unsigned int big = tf32_round_bits(v);
  return SplitTf32{big, tf32_round_bits(v - __uint_as_float(big))};
}

// acc += sign * (A B)[m0 : m0 + 16, n0 : n0 + 8] over k < depth (in steps of 8), in 3xTF32; A and
// B are padded tiles, read transposed (A^T, B^T) when kTransposeA or kTransposeB. acc holds the
// lane's four D elements (manipure_common.cuh's mma layout). Every lane of the warp must call it.
template <bool kTransposeA = false, bool kTransposeB = false>
__device__ __forceinline__ void tile_product_3xtf32(float (&acc)[4], const float* A, const float* B, int m0,
                                                    int n0, int depth, float sign) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  auto a_at = [&](int row, int k) { return sign * (kTransposeA ? A[k * kTileStride + row] : A[row * kTileStride + k]); };
  auto b_at = [&](int k, int col) { return kTransposeB ? B[col * kTileStride + k] : B[k * kTileStride + col]; };
  // Not unrolled: the three mma of a step accumulate into acc in turn anyway, and unrolling
  // hoists the next steps' loads. At sm_90, exchange_update_kernel takes 64 registers so, the
  // count of its FMA path, against 72 unrolled by 2 (three blocks of 256 threads per SM rather
  // than four) and 129 unrolled fully (one); mani_noise_kernel takes 56 (69 unrolled fully).
#pragma unroll 1
  for (int k0 = 0; k0 < depth; k0 += 8) {
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

// body(m0, n0) for each 16 x 8 output tile of [rows x cols] (rounded up), one warp per tile in
// turn; warp-uniform, so every lane of a warp reaches the same mma.
template <typename Body>
__device__ __forceinline__ void for_each_output_tile(int rows, int cols, Body body) {
  const int col_tiles = (cols + 7) / 8, tiles = (rows + 15) / 16 * col_tiles;
  for (int tile = threadIdx.x >> 5; tile < tiles; tile += blockDim.x >> 5)
    body(tile / col_tiles * 16, tile % col_tiles * 8);
}

// Two products at once, C1 = s11 A1 B1 + s12 A2 B2 and C2 = s21 A1 B2 + s22 A2 B1, over `extent`:
// the shape of a complex product's real and imaginary parts (re = A1 B1 -/+ A2 B2,
// im = A1 B2 +/- A2 B1). A2 may be null for a real A1, which drops the A2 terms. The operands are
// read transposed as in tile_product_3xtf32. Every thread of the block must call it; it returns
// synchronised.
template <bool kTransposeA = false, bool kTransposeB = false>
__device__ __forceinline__ void complex_tile_product(const float* A1, const float* A2, const float* B1,
                                                     const float* B2, float s11, float s12, float s21, float s22,
                                                     float* C1, float* C2, ProductExtent extent) {
  for_each_output_tile(extent.rows, extent.cols, [&](int m0, int n0) {
    float c1[4] = {0.f, 0.f, 0.f, 0.f}, c2[4] = {0.f, 0.f, 0.f, 0.f};
    tile_product_3xtf32<kTransposeA, kTransposeB>(c1, A1, B1, m0, n0, extent.depth, s11);
    tile_product_3xtf32<kTransposeA, kTransposeB>(c2, A1, B2, m0, n0, extent.depth, s21);
    if (A2 != nullptr) {
      tile_product_3xtf32<kTransposeA, kTransposeB>(c1, A2, B2, m0, n0, extent.depth, s12);
      tile_product_3xtf32<kTransposeA, kTransposeB>(c2, A2, B1, m0, n0, extent.depth, s22);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int e = fragment_row(m0, q) * kTileStride + fragment_col(n0, q);
      C1[e] = c1[q];
      C2[e] = c2[q];
    }
  });
  __syncthreads();
}

}  // namespace manipure

#endif  // MANIPURE_TENSOR_CORE_DFT_CUH
