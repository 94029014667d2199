// Runs the CUDA C++ kernels of kernels/cuda on the CPU, so that CI (no GPU) executes their real
// source rather than a Python imitation of it. Force-included (g++ -include) ahead of a kernel file
// as the JIT loader inlines it (cuda_ops.kernel_source); see tests/cuda_on_cpu/__init__.py.
//
// Model: the blocks of a launch run one after another, in the chosen order; the blocks of a
// thread-block cluster run together. Within them every CUDA thread is a fiber (ucontext) with its
// own stack, run cooperatively: a fiber runs until it reaches a barrier (__syncthreads, the
// cluster barrier, or one of the two warp barriers of a shuffle), and the scheduler releases a
// barrier once every thread it concerns has arrived. So
//   - one block of a cluster at a time runs as far as it can (through its own barriers, up to the
//     cluster barrier), and within it, between two barriers, one warp at a time (through its own
//     shuffles), in block, warp and lane order forward or reverse: a result that changes with the
//     order is a race that a missing barrier would cause on the device, between warps, lanes or
//     the blocks of a cluster;
//   - a barrier that not every thread of its block, cluster (or warp) reaches is reported, not
//     hung on;
//   - dynamic shared memory starts as NaN bytes (a read before a write poisons the result) and
//     is followed by a guard that must be intact after each block (a write past its end);
//   - a block reads another's shared memory (distributed shared memory) only inside their
//     cluster, inside the launch's bytes, and not after the other block has returned.
// Only what kernels/cuda uses is provided: full-warp __shfl_xor_sync, __syncthreads, __umulhi,
// __float_as_uint/__uint_as_float, float2, dynamic shared memory, the single-precision math of
// <cmath> plus cospif/sincosf, the cluster operations manipure_common.cuh wraps
// (MANIPURE_EMULATED_CLUSTER: the block's rank and count, the cluster barrier, and mapa, a pointer
// into another block's shared memory), and the two PTX instructions it wraps for the tensor cores
// (MANIPURE_EMULATED_MMA replaces its inline assembly):
//   - cvt.rna.tf32.f32: to the nearest TF32 value, ties away from zero;
//   - mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, warp-collective: each lane's fragment
//     registers are placed in the A, B and C tiles by the PTX ISA's documented layout (not by the
//     kernels' code), each operand is read as TF32 (its low 13 mantissa bits ignored, as the
//     tensor core does), and the products are summed in fp32.
#ifndef CUDA_ON_CPU_RUNTIME_H
#define CUDA_ON_CPU_RUNTIME_H

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct uint3 {
  unsigned int x, y, z;
};
using dim3 = uint3;

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline unsigned int __float_as_uint(float v) {
  unsigned int bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}
inline float __uint_as_float(unsigned int bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return (unsigned int)(((unsigned long long)a * b) >> 32);
}
// cos(pi x) and sincos in double, rounded: within the device's few-ulp error of the exact value.
inline float cospif(float x) { return (float)std::cos(M_PI * (double)x); }

namespace cuda_on_cpu {

enum class Wait { kRunning, kBlockBarrier, kClusterBarrier, kWarpBarrier, kDone, kFailed };

struct Fiber {
  ucontext_t context;
  Wait wait;
};

constexpr std::size_t kStackBytes = 128 * 1024;
constexpr std::size_t kSharedGuardBytes = 256;
constexpr unsigned char kSharedPoison = 0xFF;  // every float read from it is a NaN
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned int kMmaRegisters = 6;  // m16n8k8 TF32: A 4, B 2 (C is the lane's own)

// The blocks that run together: one, or the blocks of a cluster. Fiber f is thread f % threads of
// the cluster's block f / threads (its rank).
struct Block {
  std::vector<Fiber> fibers;
  unsigned int threads = 0, blocks = 1, first_block = 0;
  char* stacks = nullptr;  // fibers x kStackBytes, reused across launches
  ucontext_t scheduler;
  unsigned int current = 0;
  void (*body)(void*) = nullptr;
  void* body_argument = nullptr;
  std::vector<unsigned long long> warp_slots;  // a shuffle's 32 values per warp
  std::vector<unsigned int> mma_slots;          // an mma's fragment registers, kMmaRegisters per thread
  std::string error;
};

inline Block* g_block = nullptr;
inline std::size_t g_shared_bytes = 0;
inline std::vector<std::vector<unsigned char>> g_shared;  // per block rank: dynamic shared memory, then the guard

inline unsigned int block_rank() { return g_block->current / g_block->threads; }
inline void* dynamic_shared() { return g_shared[block_rank()].data(); }

// Back to the scheduler, waiting at `wait`.
inline void park(Wait wait) {
  Fiber& fiber = g_block->fibers[g_block->current];
  fiber.wait = wait;
  swapcontext(&fiber.context, &g_block->scheduler);
}

// Records the first error of the launch and stops this thread for good.
[[noreturn]] inline void fail(const std::string& message) {
  if (g_block->error.empty()) g_block->error = message;
  park(Wait::kFailed);
  __builtin_unreachable();
}

inline void fiber_entry() {
  g_block->body(g_block->body_argument);
  g_block->fibers[g_block->current].wait = Wait::kDone;  // uc_link returns to the scheduler
}

inline void run_fiber(Block& block, unsigned int f) {
  block.current = f;
  threadIdx = uint3{f % block.threads, 0, 0};
  blockIdx = uint3{block.first_block + f / block.threads, 0, 0};
  swapcontext(&block.scheduler, &block.fibers[f].context);
}

// Runs one block, or one cluster's blocks, to completion; false (with g_block->error set) on a
// failure or a barrier that cannot complete.
inline bool run_block(Block& block, bool reverse) {
  g_block = &block;
  const unsigned int threads = block.threads, fibers = threads * block.blocks;
  for (unsigned int t = 0; t < fibers; ++t) {
    Fiber& fiber = block.fibers[t];
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = block.stacks + t * kStackBytes;
    fiber.context.uc_stack.ss_size = kStackBytes;
    fiber.context.uc_link = &block.scheduler;
    makecontext(&fiber.context, fiber_entry, 0);
    fiber.wait = Wait::kRunning;
  }
  const unsigned int warps = threads / 32;  // per block
  for (;;) {
    // One block at a time runs ahead of the others, as far as it can go: through its own
    // barriers, up to the cluster barrier (or its end), as blocks may on the device. So a block
    // that reads another's shared memory without a cluster barrier between reads poison, or
    // reads it after its owner has returned. Within the block, one warp at a time runs as far as
    // it can: through its shuffles, up to a block or cluster barrier.
    unsigned int at_cluster = 0, done = 0;
    for (unsigned int i = 0; i < block.blocks; ++i) {
      const unsigned int b = reverse ? block.blocks - 1 - i : i;
      for (;;) {
        for (unsigned int k = 0; k < warps; ++k) {
          const unsigned int w = b * warps + (reverse ? warps - 1 - k : k);
          for (;;) {
            for (unsigned int j = 0; j < 32; ++j) {
              const unsigned int t = w * 32 + (reverse ? 31 - j : j);
              if (block.fibers[t].wait != Wait::kRunning) continue;
              run_fiber(block, t);
              if (block.fibers[t].wait == Wait::kFailed) return false;
            }
            unsigned int at_warp = 0;
            for (unsigned int l = 0; l < 32; ++l) at_warp += block.fibers[w * 32 + l].wait == Wait::kWarpBarrier;
            if (at_warp == 0) break;
            if (at_warp != 32) {
              block.error = "warp " + std::to_string(w) + ": " + std::to_string(at_warp) +
                            " of 32 lanes wait at a full-warp shuffle or mma the others never reach";
              return false;
            }
            for (unsigned int l = 0; l < 32; ++l) block.fibers[w * 32 + l].wait = Wait::kRunning;
          }
        }
        // Every thread of the block now waits at a barrier or has returned: once all wait at the
        // block barrier, the block goes on.
        unsigned int at_block = 0, returned = 0, at_cluster_b = 0;
        for (unsigned int t = b * threads; t < (b + 1) * threads; ++t) {
          at_block += block.fibers[t].wait == Wait::kBlockBarrier;
          at_cluster_b += block.fibers[t].wait == Wait::kClusterBarrier;
          returned += block.fibers[t].wait == Wait::kDone;
        }
        if (at_block == threads) {
          for (unsigned int t = b * threads; t < (b + 1) * threads; ++t) block.fibers[t].wait = Wait::kRunning;
          continue;
        }
        if (at_block != 0) {
          block.error = "__syncthreads reached by " + std::to_string(at_block) + " of " + std::to_string(threads) +
                        " threads" + (block.blocks > 1 ? " of cluster block " + std::to_string(b) : "") +
                        "; the other " + std::to_string(returned) + " had returned" +
                        (at_cluster_b != 0 ? " or wait at the cluster barrier" : "");
          return false;
        }
        at_cluster += at_cluster_b;
        done += returned;
        break;
      }
    }
    // Every thread of the cluster now waits at the cluster barrier or has returned; once all
    // wait at it, they all go on.
    if (done == fibers) return true;
    if (at_cluster == fibers) {
      for (Fiber& fiber : block.fibers) fiber.wait = Wait::kRunning;
      continue;
    }
    block.error = "the cluster barrier reached by " + std::to_string(at_cluster) + " of " +
                  std::to_string(fibers) + " threads; the other " + std::to_string(done) + " had returned";
    return false;
  }
}

// A launch of `grid` blocks of `threads` threads with `shared_bytes` of dynamic shared memory, in
// clusters of `cluster` blocks (a kernel's __cluster_dims__; 1 without); an empty string, or what
// went wrong.
inline std::string run_grid(void (*body)(void*), void* argument, unsigned int grid, unsigned int threads,
                            std::size_t shared_bytes, bool reverse, unsigned int cluster = 1) {
  if (threads == 0 || threads % 32 != 0 || threads > 1024)
    return "block size " + std::to_string(threads) + " is not a multiple of 32 in [32, 1024]";
  if (cluster == 0 || cluster > 8 || grid % cluster != 0)
    return "a grid of " + std::to_string(grid) + " blocks in clusters of " + std::to_string(cluster) +
           " (a cluster has 1 to 8 blocks, and the grid whole clusters)";
  const unsigned int fibers = threads * cluster;
  // The fiber stacks outlive the launch: zero-filling 32 MB per launch would dominate small ones.
  // (Launches are not reentrant anyway: the runtime's state is global.)
  static std::vector<char> stacks;
  if (stacks.size() < fibers * kStackBytes) stacks.resize(fibers * kStackBytes);
  Block block;
  block.fibers.resize(fibers);
  block.threads = threads;
  block.blocks = cluster;
  block.stacks = stacks.data();
  block.warp_slots.resize(fibers);
  block.mma_slots.resize(fibers * kMmaRegisters);
  block.body = body;
  block.body_argument = argument;
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{threads, 1, 1};
  g_shared_bytes = shared_bytes;
  g_shared.assign(cluster, std::vector<unsigned char>(shared_bytes + kSharedGuardBytes, kGuardByte));
  const unsigned int clusters = grid / cluster;
  for (unsigned int i = 0; i < clusters; ++i) {
    // In reverse, clusters (and blocks within them) run last to first: blocks that write the same
    // global memory show too.
    const unsigned int c = reverse ? clusters - 1 - i : i;
    for (std::vector<unsigned char>& shared : g_shared) std::memset(shared.data(), kSharedPoison, shared_bytes);
    block.first_block = c * cluster;
    const std::string where = cluster == 1 ? "block " + std::to_string(c) : "cluster " + std::to_string(c);
    if (!run_block(block, reverse)) return where + ": " + block.error;
    for (unsigned int b = 0; b < cluster; ++b)
      for (std::size_t i = shared_bytes; i < g_shared[b].size(); ++i)
        if (g_shared[b][i] != kGuardByte)
          return "block " + std::to_string(c * cluster + b) + " wrote shared memory byte " + std::to_string(i) +
                 ", past the " + std::to_string(shared_bytes) + " bytes of the launch";
  }
  return "";
}

// ---- calling a kernel with cudaLaunchKernel's argument array -----------------------------------
template <class... Params>
struct Call {
  void (*kernel)(Params...);
  void** arguments;
};

template <class... Params, std::size_t... I>
void invoke(const Call<Params...>& call, std::index_sequence<I...>) {
  call.kernel(*static_cast<std::remove_cv_t<Params>*>(call.arguments[I])...);
}

template <class... Params>
void call_body(void* call) {
  invoke(*static_cast<Call<Params...>*>(call), std::index_sequence_for<Params...>{});
}

template <class... Params>
std::string launch(void (*kernel)(Params...), void** arguments, unsigned int grid, unsigned int threads,
                   std::size_t shared_bytes, bool reverse, unsigned int cluster = 1) {
  Call<Params...> call{kernel, arguments};
  return run_grid(call_body<Params...>, &call, grid, threads, shared_bytes, reverse, cluster);
}

// What the harness checks each argument against: "float*", "float2*", "int*", "int64*" (each
// possibly "const "), "int", "float".
template <class T>
std::string type_name() {
  using Pointee = std::remove_pointer_t<T>;
  using U = std::remove_cv_t<Pointee>;
  const std::string pointer = std::is_pointer_v<T> ? "*" : "";
  const std::string constant = std::is_pointer_v<T> && std::is_const_v<Pointee> ? "const " : "";
  if (std::is_same_v<U, float>) return constant + "float" + pointer;
  if (std::is_same_v<U, float2>) return constant + "float2" + pointer;
  if (std::is_same_v<U, int>) return constant + "int" + pointer;
  if (std::is_same_v<U, long long>) return constant + "int64" + pointer;
  return "unsupported";
}

template <class... Params>
std::string signature(void (*)(Params...)) {
  std::string out;
  ((out += (out.empty() ? "" : ","), out += type_name<Params>()), ...);
  return out;
}

}  // namespace cuda_on_cpu

inline void __syncthreads() { cuda_on_cpu::park(cuda_on_cpu::Wait::kBlockBarrier); }

// The full-warp butterfly exchange: every lane publishes its value, waits for the warp, reads its
// partner's, and waits again so that no lane overwrites a value before its partner has read it.
template <class T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a value wider than 64 bits");
  using cuda_on_cpu::g_block;
  if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask > 31)
    cuda_on_cpu::fail("only full-warp __shfl_xor_sync with width 32 is emulated");
  const unsigned int lane = threadIdx.x & 31, first = g_block->current & ~31u;  // fiber index of lane 0
  std::memcpy(&g_block->warp_slots[g_block->current], &value, sizeof(T));
  cuda_on_cpu::park(cuda_on_cpu::Wait::kWarpBarrier);
  T partner;
  std::memcpy(&partner, &g_block->warp_slots[first + (lane ^ (unsigned int)lane_mask)], sizeof(T));
  cuda_on_cpu::park(cuda_on_cpu::Wait::kWarpBarrier);
  return partner;
}

// ---- the cluster operations of manipure_common.cuh ---------------------------------------------
#define MANIPURE_EMULATED_CLUSTER 1
#define __cluster_dims__(x, y, z)  // the harness reads the block count from the source

namespace manipure {

inline unsigned int cluster_block_rank() { return cuda_on_cpu::block_rank(); }
inline unsigned int cluster_block_count() { return cuda_on_cpu::g_block->blocks; }
// barrier.cluster.arrive.release + barrier.cluster.wait.acquire: every thread of every block of
// the cluster, and the shared-memory writes before it seen by all of them after it.
inline void cluster_sync() { cuda_on_cpu::park(cuda_on_cpu::Wait::kClusterBarrier); }

// mapa: where `p`, in this block's shared memory, lies in the shared memory of block `rank` of the
// cluster.
template <class T>
T* cluster_shared(T* p, unsigned int rank) {
  using namespace cuda_on_cpu;
  const std::ptrdiff_t offset = reinterpret_cast<const unsigned char*>(p) - g_shared[block_rank()].data();
  if (offset < 0 || static_cast<std::size_t>(offset) >= g_shared_bytes)
    fail("cluster_shared: the pointer is not in the block's dynamic shared memory");
  if (rank >= g_block->blocks)
    fail("cluster_shared: block " + std::to_string(rank) + " of a cluster of " + std::to_string(g_block->blocks));
  unsigned int returned = 0;
  for (unsigned int t = rank * g_block->threads; t < (rank + 1) * g_block->threads; ++t)
    returned += g_block->fibers[t].wait == Wait::kDone;
  if (returned == g_block->threads)
    fail("cluster_shared: block " + std::to_string(rank) + " of the cluster has returned; its shared memory is gone");
  return reinterpret_cast<T*>(g_shared[rank].data() + offset);
}

}  // namespace manipure

// ---- the tensor-core instructions of manipure_common.cuh ---------------------------------------
#define MANIPURE_EMULATED_MMA 1

namespace manipure {

inline unsigned int tf32_round_bits(float v) {  // cvt.rna.tf32.f32
  const unsigned int bits = __float_as_uint(v);
  if (!std::isfinite(v)) return bits;
  return (bits + 0x1000u) & ~0x1FFFu;  // sign-magnitude: the carry rounds |v| up, ties included
}

// d += A B on one warp's 16x8x8 tile, fragments as the PTX ISA lays them out for
// mma.m16n8k8 .tf32 (groupID = lane / 4, threadID_in_group = lane % 4):
//   A 16x8, row: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
//   B 8x8, col:  b0 (t, g), b1 (t + 4, g)
//   C/D 16x8:    c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
// tests/test_cuda_on_cpu.py checks this against CUTLASS's MMA_Traits of the same instruction.
inline void mma_tf32_m16n8k8(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
  using cuda_on_cpu::g_block;
  using cuda_on_cpu::kMmaRegisters;
  const unsigned int lane = threadIdx.x & 31, first = g_block->current & ~31u;  // fiber index of lane 0
  unsigned int* slots = g_block->mma_slots.data();
  unsigned int* mine = slots + g_block->current * kMmaRegisters;
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
  cuda_on_cpu::park(cuda_on_cpu::Wait::kWarpBarrier);  // every lane's fragments are in place
  auto operand = [&](unsigned int holder, unsigned int reg) {
    return __uint_as_float(slots[(first + holder) * kMmaRegisters + reg] & ~0x1FFFu);
  };
  const unsigned int g = lane >> 2, t = lane & 3;
  float out[4];
  for (unsigned int q = 0; q < 4; ++q) {
    const unsigned int row = g + (q >> 1) * 8, col = 2 * t + (q & 1);
    float sum = 0.f;
    for (unsigned int k = 0; k < 8; ++k) {
      const float a_rk = operand((row % 8) * 4 + k % 4, (row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0));
      const float b_kc = operand(col * 4 + k % 4, k >= 4 ? 5 : 4);  // B follows A's 4 registers
      sum += a_rk * b_kc;
    }
    out[q] = d[q] + sum;
  }
  cuda_on_cpu::park(cuda_on_cpu::Wait::kWarpBarrier);  // no lane overwrites its slots before all have read
  for (int q = 0; q < 4; ++q) d[q] = out[q];
}

}  // namespace manipure

#endif  // CUDA_ON_CPU_RUNTIME_H
