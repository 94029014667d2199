// Shared device helpers for the manipure_fast CUDA kernels: Philox4x32-10 Gaussian noise from a
// seed/offset held in device memory, block reductions, and the reference purifier's pixel-scale
// maps. Header-only; compiled by nvcc (CMake build, CI compile check) and by NVRTC (CuPy JIT), so
// it includes no standard headers. Include guards rather than #pragma once, because the JIT loader
// inlines this file into each kernel source.
#ifndef MANIPURE_COMMON_CUH
#define MANIPURE_COMMON_CUH

namespace manipure {

// ---- Philox4x32-10 (Salmon et al., SC'11) ------------------------------------------------------
struct Philox4 {
  unsigned int x, y, z, w;
};

__device__ __forceinline__ Philox4 philox_round(Philox4 c, unsigned int k0, unsigned int k1) {
  const unsigned int m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  unsigned int hi0 = __umulhi(m0, c.x), lo0 = m0 * c.x;
  unsigned int hi1 = __umulhi(m1, c.z), lo1 = m1 * c.z;
  Philox4 r = {hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
  return r;
}

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 c, unsigned int k0, unsigned int k1) {
#pragma unroll
  for (int i = 0; i < 9; ++i) {
    c = philox_round(c, k0, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return philox_round(c, k0, k1);
}

// One standard normal for element `index` of the launch whose generator state is (seed, offset).
// The counter holds the element index and the offset, so every (seed, offset, index) is a
// distinct stream position; the op advances the offset on the device after each launch.
__device__ __forceinline__ float philox_normal(const long long* rng_state, unsigned long long index) {
  const unsigned long long seed = (unsigned long long)rng_state[0];
  const unsigned long long offset = (unsigned long long)rng_state[1];
  Philox4 counter = {(unsigned int)index, (unsigned int)(index >> 32), (unsigned int)offset,
                     (unsigned int)(offset >> 32)};
  Philox4 r = philox4x32_10(counter, (unsigned int)seed, (unsigned int)(seed >> 32));
  const float two_pow_m32 = 2.3283064365386963e-10f;
  float u1 = ((float)r.x + 1.0f) * two_pow_m32;  // (0, 1]: log is finite
  float u2 = (float)r.y * two_pow_m32;            // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// ---- DFT accumulation ---------------------------------------------------------------------------
// acc + v (c + i s): with (c, s) = (cos, sin) of a twiddle angle, s negated for the forward
// transform (e^{-i theta}) and as is for the inverse (e^{+i theta}).
__device__ __forceinline__ float2 twiddle_mac(float2 acc, float2 v, float c, float s) {
  acc.x += v.x * c - v.y * s;
  acc.y += v.x * s + v.y * c;
  return acc;
}

// ---- tensor cores: TF32 operands, fp32 accumulation (sm_80 and later) --------------------------
// The CPU runtime of the tests (tests/cuda_on_cpu/runtime.h) defines MANIPURE_EMULATED_MMA and
// its own versions of these two, which follow the PTX ISA's semantics and fragment layout.
#ifndef MANIPURE_EMULATED_MMA
// v rounded to TF32 (nearest, ties away from zero), as the bits of an fp32 word.
__device__ __forceinline__ unsigned int tf32_round_bits(float v) {
  unsigned int bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(v));
  return bits;
}

// d += A B for one warp's 16x8 tile of D over k = 8, every lane of the warp together. Lane L
// (g = L / 4, t = L % 4) holds A (row-major 16x8) at (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4);
// B (8x8) at (t, g), (t + 4, g); and D at (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const unsigned int (&a)[4],
                                                 const unsigned int (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---- thread-block clusters (sm_90 and later) ---------------------------------------------------
// The CPU runtime of the tests defines MANIPURE_EMULATED_CLUSTER and its own versions of these.
// A kernel that uses them declares its cluster with MANIPURE_CLUSTER_DIMS(blocks): the attribute
// exists on sm_90 and later only, so an architecture below gets the kernel without it (its body
// must not run there: check __CUDA_ARCH__).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define MANIPURE_CLUSTER_DIMS(blocks)
#else
#define MANIPURE_CLUSTER_DIMS(blocks) __cluster_dims__(blocks, 1, 1)
#endif

#if !defined(MANIPURE_EMULATED_CLUSTER) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900)
// This block's rank in its cluster, and the cluster's block count.
__device__ __forceinline__ unsigned int cluster_block_rank() {
  unsigned int rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

__device__ __forceinline__ unsigned int cluster_block_count() {
  unsigned int count;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(count));
  return count;
}

// Every thread of every block of the cluster arrives, and waits for the others; the shared-memory
// writes before it (in any block) are seen by all after it. All threads of each warp together.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Where `p`, in this block's shared memory, lies in the shared memory of block `rank` of the
// cluster: a generic address that ordinary loads read (distributed shared memory).
template <class T>
__device__ __forceinline__ T* cluster_shared(T* p, unsigned int rank) {
  unsigned long long mapped;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(mapped) : "l"(p), "r"(rank));
  return reinterpret_cast<T*>(mapped);
}
#endif

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, d));
  return v;
}

// Every thread gets the block's sum (or max); `scratch` holds 32 floats. Deterministic order.
__device__ __forceinline__ float block_reduce(float v, float* scratch, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : (is_max ? -3.402823466e38f : 0.0f);
  r = is_max ? warp_max(r) : warp_sum(r);
  return r;
}

// ---- the reference purifier's [-1, 1] <-> [0, 255] maps ---------------------------------------
__device__ __forceinline__ float to_pixels(float x) {
  float v = fminf(fmaxf(x / 2.0f + 0.5f, 0.0f), 1.0f) * 255.0f;
  return fminf(fmaxf(v, 0.0f), 255.0f);
}

__device__ __forceinline__ float to_diffusion(float v) {
  return fminf(fmaxf((fminf(fmaxf(v, 0.0f), 255.0f) / 255.0f - 0.5f) * 2.0f, -1.0f), 1.0f);
}

}  // namespace manipure

#endif  // MANIPURE_COMMON_CUH
