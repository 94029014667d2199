"""The CPU runtime for CUDA kernels (tests/cuda_on_cpu) itself: a kernel with a known defect must be
caught, and correct warp and block code must run as on the device. test_cuda_ops.py
relies on it to check kernels/cuda."""

from __future__ import annotations

import math

import cuda_on_cpu
import numpy
import pytest
import torch

pytestmark = pytest.mark.skipif(
    cuda_on_cpu.compiler_unavailable_reason() is not None,
    reason=str(cuda_on_cpu.compiler_unavailable_reason()),
)

SOURCE = r"""
extern "C" __global__ void neighbour(const float* x, float* out, int sync) {
  extern __shared__ float values[];
  values[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (sync) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = values[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void shifted_copy(const float* x, float* out, int shift) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i + shift] = x[i];
}

extern "C" __global__ void shared_copy(const float* x, float* out, int written, int index) {
  extern __shared__ float values[];
  if ((int)threadIdx.x < written) values[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) values[index] = 0.f;
  __syncthreads();
  out[threadIdx.x] = values[threadIdx.x];
}

extern "C" __global__ void early_return(float* out, int returning) {
  if ((int)threadIdx.x < returning) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

extern "C" __global__ void warp_sums(const float* x, float* out, int half_warp_only) {
  float v = x[threadIdx.x];
  if (!half_warp_only || (threadIdx.x & 31) < 16)
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  out[threadIdx.x] = v;
}

// Two block sums in a row through one 32-float scratch, as manipure_common.cuh's block_reduce; the
// barrier before the scratch is written again is optional.
__device__ float block_sum(float v, float* scratch, int guard) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  if (guard) __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = (threadIdx.x & 31) < (blockDim.x >> 5) ? scratch[threadIdx.x & 31] : 0.f;
  for (int d = 16; d > 0; d >>= 1) r += __shfl_xor_sync(0xffffffffu, r, d);
  return r;
}

extern "C" __global__ void two_sums(const float* x, float* out, int guard) {
  extern __shared__ float scratch[];
  const float first = block_sum(x[threadIdx.x], scratch, guard);
  out[threadIdx.x] = first + block_sum(2.f * x[threadIdx.x], scratch, guard);
}

extern "C" __global__ void last_block_wins(float* out) {
  out[threadIdx.x] = (float)blockIdx.x;
}

extern "C" __global__ void fill(float* out, int count) {
  if ((int)threadIdx.x < count) out[threadIdx.x] = 1.f;
}

// One m16n8k8 TF32 tensor-core product, D = 1 + A B: A [16 x 8] and B [8 x 8] row-major into
// D [16 x 8] row-major. Lane l's fragment register r holds A[a_at[4 l + r]], B[b_at[2 l + r]] and
// D[d_at[4 l + r]]: the test derives those tables from CUTLASS's layouts of the instruction, so the
// runtime's fragment layout is checked against a source other than its own reading of the PTX ISA.
// The first `lanes` lanes of the warp take part.
extern "C" __global__ void mma_16x8x8(const float* A, const float* B, float* D, const int* a_at,
                                      const int* b_at, const int* d_at, int lanes) {
  const int lane = threadIdx.x & 31;
  unsigned int a[4], b[2];
  for (int r = 0; r < 4; ++r) a[r] = __float_as_uint(A[a_at[4 * lane + r]]);
  for (int r = 0; r < 2; ++r) b[r] = __float_as_uint(B[b_at[2 * lane + r]]);
  float d[4] = {1.f, 1.f, 1.f, 1.f};
  if (lane < lanes) manipure::mma_tf32_m16n8k8(d, a, b);
  for (int r = 0; r < 4; ++r) D[d_at[4 * lane + r]] = d[r];
}

extern "C" __global__ void to_tf32(const float* x, float* out) {
  out[threadIdx.x] = __uint_as_float(manipure::tf32_round_bits(x[threadIdx.x]));
}

extern "C" __global__ void typed(const long long* a, const int* b, float* out, int n, float scale) {
  if (threadIdx.x == 0) out[0] = scale * (float)(a[0] - (1LL << 33) + b[0] + n);
}

// Thread-block clusters of 4 (manipure_common.cuh declares them with this macro). Each block
// writes its rank into its shared memory; after the cluster barrier (sync 1; sync 2 is only the
// block's barrier, which does not order blocks), thread i reads the value of block (rank + 1) % 4
// through distributed shared memory, at element `at`. `wait`: the blocks meet again before
// returning, so that none returns while another reads its memory.
#define MANIPURE_CLUSTER_DIMS(blocks) __cluster_dims__(blocks, 1, 1)
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(4) neighbour_block(float* out, int sync, int wait, int at) {
  extern __shared__ float values[];
  const unsigned int rank = manipure::cluster_block_rank();
  values[threadIdx.x] = (float)(100 * manipure::cluster_block_count() + 10 * blockIdx.x + rank);
  if (sync == 1) manipure::cluster_sync();
  if (sync == 2) __syncthreads();
  const float* peer = manipure::cluster_shared(values + at, (rank + 1) % 4);
  out[blockIdx.x * blockDim.x + threadIdx.x] = peer[threadIdx.x];
  if (wait) manipure::cluster_sync();
}

// The cluster barrier, reached by the blocks of rank >= `skipping` only.
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(2) cluster_partial_barrier(float* out, int skipping) {
  if (manipure::cluster_block_rank() >= (unsigned int)skipping) manipure::cluster_sync();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.f;
}
"""


@pytest.fixture(scope="module")
def module():
    return cuda_on_cpu.module(SOURCE)


def i32(v):
    return numpy.int32(v)


def test_reads_the_kernel_signatures(module):
    names = [
        "neighbour",
        "shifted_copy",
        "shared_copy",
        "early_return",
        "warp_sums",
        "two_sums",
        "last_block_wins",
        "fill",
        "mma_16x8x8",
        "to_tf32",
        "typed",
        "neighbour_block",
        "cluster_partial_barrier",
    ]
    assert module.names == names
    assert module.clusters["neighbour_block"] == 4 and module.clusters["typed"] == 1
    assert module.kernel("typed").parameters == ["const int64*", "const int*", "float*", "int", "float"]


def test_a_missing_barrier_shows_as_a_result_that_depends_on_thread_order(module):
    x = torch.arange(128, dtype=torch.float32)

    def run(sync):
        out = torch.empty_like(x)
        module.kernel("neighbour")(2, 64, (x, out, i32(sync)), 64 * 4)
        return out

    expected = x.view(2, 64).roll(-1, dims=1).reshape(-1)
    for order in ("forward", "reverse"):
        with cuda_on_cpu.schedule(order):
            assert torch.equal(run(sync=True), expected)
    with cuda_on_cpu.schedule("forward"):
        forward = run(sync=False)
    with cuda_on_cpu.schedule("reverse"):
        reverse = run(sync=False)
    assert not torch.equal(forward, reverse)


def test_a_warp_runs_ahead_of_the_others(module):
    """Without the barrier before the scratch is reused, a warp that finishes the first sum early
    overwrites a partial another warp has not read yet; on the device as here."""
    x = torch.arange(256, dtype=torch.float32)

    def run(guard, order):
        out = torch.empty_like(x)
        with cuda_on_cpu.schedule(order):
            module.kernel("two_sums")(1, 256, (x, out, i32(guard)), 32 * 4)
        return out

    for order in ("forward", "reverse"):
        assert (run(guard=True, order=order) == 3 * x.sum()).all()
        assert not (run(guard=False, order=order) == 3 * x.sum()).all()


def test_blocks_writing_the_same_memory_depend_on_block_order(module):
    out = torch.empty(32)
    for order, last in (("forward", 2), ("reverse", 0)):
        with cuda_on_cpu.schedule(order):
            module.kernel("last_block_wins")(3, 32, (out,), 0)
        assert (out == last).all()


def test_global_memory_outside_a_tensor(module):
    x, out = torch.ones(64), torch.zeros(64)
    with pytest.raises(RuntimeError, match=r"shifted_copy wrote after a \(64,\) torch.float32 tensor"):
        module.kernel("shifted_copy")(1, 64, (x, out, i32(1)), 0)
    with pytest.raises(RuntimeError, match="wrote before"):
        module.kernel("shifted_copy")(1, 64, (x, out, i32(-1)), 0)
    # reading past the end reads NaN: shared_copy's thread 0 reads x[0..63] of a 40-element tensor
    short, out = torch.ones(40), torch.zeros(64)
    module.kernel("shared_copy")(1, 64, (short, out, i32(64), i32(0)), 64 * 4)
    assert out[40:].isnan().all() and (out[1:40] == 1).all()


def test_outputs_must_be_written_whole(module):
    out = torch.zeros(64)
    module.kernel("fill")(1, 64, (out, i32(64)), 0)
    assert (out == 1).all()
    with pytest.raises(RuntimeError, match=r"fill left 4 of 64 elements of its output \(argument 0"):
        module.kernel("fill")(1, 64, (out, i32(60)), 0)


def test_shared_memory_is_nan_until_written_and_guarded_past_its_end(module):
    x, out = torch.ones(64), torch.zeros(64)
    module.kernel("shared_copy")(1, 64, (x, out, i32(32), i32(0)), 64 * 4)
    assert out[0] == 0 and (out[1:32] == 1).all() and out[32:].isnan().all()
    with pytest.raises(RuntimeError, match="wrote shared memory byte 256, past the 256 bytes"):
        module.kernel("shared_copy")(1, 64, (x, out, i32(64), i32(64)), 64 * 4)


def test_barriers_not_every_thread_reaches(module):
    out = torch.zeros(64)
    module.kernel("early_return")(1, 64, (out, i32(0)), 0)
    assert (out == 1).all()
    with pytest.raises(RuntimeError, match="__syncthreads reached by 32 of 64 threads"):
        module.kernel("early_return")(1, 64, (out, i32(32)), 0)


def test_warp_shuffles(module):
    x = torch.arange(64, dtype=torch.float32)
    out = torch.empty_like(x)
    module.kernel("warp_sums")(1, 64, (x, out, i32(0)), 0)
    assert torch.equal(out, x.view(2, 32).sum(1).repeat_interleave(32))
    with pytest.raises(RuntimeError, match="16 of 32 lanes wait at a full-warp shuffle or mma"):
        module.kernel("warp_sums")(1, 64, (x, out, i32(1)), 0)


def test_arguments_are_checked_against_the_signature(module):
    a, b, out = torch.tensor([2**33]), torch.tensor([3], dtype=torch.int32), torch.zeros(1)
    typed = module.kernel("typed")
    typed(1, 32, (a, b, out, i32(4), numpy.float32(0.5)), 0)
    assert float(out) == 0.5 * 7  # a 64-bit int passes whole
    bad = [
        ((a, b, out, i32(4)), "typed takes 5 arguments, got 4"),
        ((a.int(), b, out, i32(4), numpy.float32(1)), "argument 0 is a int64\\*; got a torch.int32 tensor"),
        ((a, b, out, 4, numpy.float32(1)), "argument 3 is a int; pass int32, not int"),
        ((a, b, out, i32(4), 1.0), "argument 4 is a float; pass float32, not float"),
        ((a, b, torch.zeros(2, 2).t(), i32(4), numpy.float32(1)), "argument 2 is not contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(TypeError, match=message):
            typed(1, 32, args, 0)


def _tf32_truncated(t):
    return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)


def _cute_fragment_offsets(thread_stride, value_shape, value_stride, rows, cols):
    """Row-major offsets, [32 lanes, values], of a CuTe (T32, V) -> (M, N) layout: the thread mode
    is Shape<_4, _8> with `thread_stride`, the value mode `value_shape` with `value_stride`, and
    the layout's index is column-major in (M, N), as CuTe flattens it."""
    offsets = torch.empty(32, math.prod(value_shape), dtype=torch.int32)
    for lane in range(32):
        for value in range(offsets.shape[1]):
            thread_coords = (lane % 4, lane // 4)
            value_coords = (value % value_shape[0], value // value_shape[0])[: len(value_shape)]
            index = sum(c * s for c, s in zip(thread_coords, thread_stride))
            index += sum(c * s for c, s in zip(value_coords, value_stride))
            row, col = index % rows, index // rows
            assert col < cols
            offsets[lane, value] = row * cols + col
    return offsets.flatten()


# CUTLASS's MMA_Traits<SM80_16x8x8_F32TF32TF32F32_TN> (cute/atom/mma_traits_sm80.hpp):
#   ALayout (M16, K8): Shape<Shape<_4,_8>, Shape<_2,_2>>, Stride<Stride<_16,_1>, Stride<_8,_64>>
#   BLayout (N8, K8):  Shape<Shape<_4,_8>, _2>,           Stride<Stride<_8,_1>, _32>
#   CLayout (M16, N8): SM80_16x8_Row,
#                      Shape<Shape<_4,_8>, Shape<_2,_2>>, Stride<Stride<_32,_1>, Stride<_16,_8>>
# B's layout is over (N, K); the kernel's B is [K x N] row-major, hence the transpose below.
A_AT = _cute_fragment_offsets((16, 1), (2, 2), (8, 64), rows=16, cols=8)
B_AT_NK = _cute_fragment_offsets((8, 1), (2,), (32,), rows=8, cols=8)
B_AT = (B_AT_NK % 8) * 8 + B_AT_NK // 8
D_AT = _cute_fragment_offsets((32, 1), (2, 2), (16, 8), rows=16, cols=8)


def test_cutlass_fragment_tables_cover_each_operand_once():
    for table, size in ((A_AT, 128), (B_AT, 64), (D_AT, 128)):
        assert sorted(table.tolist()) == list(range(size))


def test_tensor_core_mma_follows_the_ptx_fragment_layout(module):
    """D = 1 + A B with each operand read as TF32 (low 13 mantissa bits ignored), the fragments
    placed by CUTLASS's layouts: a runtime that reads any fragment register at another (row,
    column) fails the first check, and operands used in full precision fail the second."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 8, generator=gen), torch.randn(8, 8, generator=gen)
    out = torch.empty(16, 8)
    tables = (A_AT, B_AT, D_AT)
    module.kernel("mma_16x8x8")(1, 32, (a, b, out, *tables, i32(32)), 0)
    as_tf32 = 1 + _tf32_truncated(a).double() @ _tf32_truncated(b).double()
    assert (out.double() - as_tf32).abs().max() <= 1e-5
    assert (out.double() - (1 + a.double() @ b.double())).abs().max() >= 1e-4
    with pytest.raises(RuntimeError, match="16 of 32 lanes wait at a full-warp shuffle or mma"):
        module.kernel("mma_16x8x8")(1, 32, (a, b, out, *tables, i32(16)), 0)


def test_tf32_rounding_is_nearest_ties_away_from_zero(module):
    ulp = 2.0**-10
    x = torch.tensor([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2**-23, 1 + 3 * ulp / 2] + [3.0] * 28)
    out = torch.empty_like(x)
    module.kernel("to_tf32")(1, 32, (x, out), 0)
    assert out[:4].tolist() == [1 + ulp, -(1 + ulp), 1.0, 1 + 2 * ulp]


def test_cluster_blocks_run_together_and_read_each_others_shared_memory(module):
    """8 blocks in two clusters of 4: each reads its neighbour's shared memory after the cluster
    barrier, in either order; without the barrier, what it reads depends on the order (or is the
    poison of memory not written yet)."""

    def run(sync, order):  # sync: 0 none, 1 the cluster barrier, 2 the block barrier only
        out = torch.empty(8 * 32)
        with cuda_on_cpu.schedule(order):
            module.kernel("neighbour_block")(8, 32, (out, i32(sync), i32(1), i32(0)), 32 * 4)
        return out.view(8, 32)

    block = torch.arange(8)
    neighbour = (block // 4) * 4 + (block % 4 + 1) % 4
    expected = (400 + 10 * neighbour + neighbour % 4).float()[:, None].expand(8, 32)
    for order in ("forward", "reverse"):
        assert torch.equal(run(sync=1, order=order), expected)
    for sync in (0, 2):  # no barrier, or only the block's
        forward, reverse = run(sync=sync, order="forward"), run(sync=sync, order="reverse")
        assert not torch.equal(forward.nan_to_num(-1), reverse.nan_to_num(-1))
        assert forward.isnan().any() and reverse.isnan().any()  # a block read one that had not run


def test_cluster_misuse_is_reported(module):
    out = torch.empty(8 * 32)
    kernel = module.kernel("neighbour_block")
    with pytest.raises(RuntimeError, match="block 3 of the cluster has returned"):
        with cuda_on_cpu.schedule("reverse"):  # block 3 runs first and returns; block 2 reads it
            kernel(4, 32, (out[:128], i32(1), i32(0), i32(0)), 32 * 4)
    with pytest.raises(RuntimeError, match="not in the block's dynamic shared memory"):
        kernel(4, 32, (out[:128], i32(1), i32(1), i32(32)), 32 * 4)
    with pytest.raises(RuntimeError, match="clusters of 4"):
        kernel(6, 32, (out[:192], i32(1), i32(1), i32(0)), 32 * 4)
    partial = module.kernel("cluster_partial_barrier")
    partial(4, 32, (out[:128], i32(0)), 0)
    with pytest.raises(RuntimeError, match="the cluster barrier reached by 32 of 64 threads"):
        partial(4, 32, (out[:128], i32(1)), 0)
