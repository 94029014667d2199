// MANI re-noising (SPEC §1) of 256 x 256 planes (ImageNet's) in one launch: a thread-block cluster
// of eight blocks per (image, channel) plane holds the plane's whole half spectrum in their shared
// memory (sm_90 and later). It reads x (and given noise) once and writes the output once, where
// the four-launch path (mani_noise_large.cu around cuFFT) moves about four times the bytes: MANI
// needs three plane-wide results in sequence (the band means, the map's statistic, the output),
// and a plane's 264 KB half spectrum does not fit one block. The same semantics as
// mani_noise_large.cu, whose band, share and statistic conventions it follows:
//
//   1. rows      block r transforms rows 32r..32r+31 of x: two real rows as one complex 256-point
//                FFT (z = x_a + i x_b), then split into their half spectra (129 columns each)
//   2. columns   block r gathers columns 16r..16r+15 of all 256 rows from the eight blocks'
//                shared memory (block 0 takes the real columns 0 and 128 as one complex column)
//                and transforms them: F, the plane's half spectrum, spread over the cluster
//   3. bands     the band sums of share |F| per block, then across the cluster (in rank order, so
//                every block gets the same means), the weights, and G = w[band] F (or w[band])
//   4. inverse   the columns' inverse FFTs; block r gathers its rows back and takes two real rows'
//                inverse as one complex FFT: Y = irfft2(G), real
//   5. inject    the statistic of |Y| over the plane (rms, max or none) across the cluster, then
//                x_t = sqrt(abar) x + sqrt(1-abar) (|Y| / s) z, with the Philox counters of the
//                other MANI kernels (plane * H * W + pixel)
//
// Every 256-point FFT is 16 x 16: a thread per 16-point column transform in registers (radix 4 x
// 4), the twiddles W^(n1 k1), and a thread per 16-point row transform. A block runs 16 FFTs at a
// time with 16 threads each. Each FFT's 256 values sit in a buffer of 16 rows of 17 float2 (value
// n at (n / 16) * 17 + n % 16, plus one float2 of padding per buffer): the padding keeps both
// passes' shared-memory accesses free of bank conflicts.
#include "mani_stages.cuh"

namespace manipure {

constexpr int kClusterSide = 256;                          // the plane side this kernel is written for
constexpr int kClusterBlocks = 8;                          // blocks per plane: the cluster (see the kernel)
constexpr int kSlabRows = kClusterSide / kClusterBlocks;   // rows of x per block
constexpr int kHalfColumns = kClusterSide / 2 + 1;         // the half spectrum's columns
constexpr int kSlabColumns = kClusterSide / 2 / kClusterBlocks;  // spectrum columns per block
constexpr int kFftRadix = 16;                              // 256 = 16 x 16
constexpr int kFftStride = kFftRadix * (kFftRadix + 1) + 1;  // float2 per FFT buffer
constexpr int kFftsAtOnce = 16;                            // 16 threads each: 256 threads
static_assert(kFftRadix * kFftRadix == kClusterSide, "the FFT is 16 x 16 points");
static_assert(kSlabRows == 2 * kFftsAtOnce && kSlabColumns == kFftsAtOnce, "a block's FFTs at once");

__device__ __forceinline__ float2 c_add(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 c_sub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float2 c_mul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 c_conj(float2 a) { return make_float2(a.x, -a.y); }

// Where value n (< 256) of an FFT lies in its buffer.
__device__ __forceinline__ int fft_slot(int n) { return (n >> 4) * (kFftRadix + 1) + (n & 15); }

// The 4-point DFT of (a, b, c, d) in place; kInverse takes e^{+i}.
template <bool kInverse>
__device__ __forceinline__ void fft4(float2& a, float2& b, float2& c, float2& d) {
  const float2 s0 = c_add(a, c), d0 = c_sub(a, c), s1 = c_add(b, d), d1 = c_sub(b, d);
  const float2 turned = kInverse ? make_float2(-d1.y, d1.x) : make_float2(d1.y, -d1.x);  // (+/-i) d1
  a = c_add(s0, s1);
  b = c_add(d0, turned);
  c = c_sub(s0, s1);
  d = c_sub(d0, turned);
}

// e^{-2 pi i m / 16} (kInverse: e^{+}) for the m = n1 k1 of fft16's twiddles.
template <bool kInverse>
__device__ __forceinline__ float2 w16(int m) {
  const float c1 = 0.923879532511286756f, s1 = 0.382683432365089772f, r = 0.707106781186547524f;
  float2 w = make_float2(1.f, 0.f);
  if (m == 1) w = make_float2(c1, -s1);
  if (m == 2) w = make_float2(r, -r);
  if (m == 3) w = make_float2(s1, -c1);
  if (m == 4) w = make_float2(0.f, -1.f);
  if (m == 6) w = make_float2(-r, -r);
  if (m == 9) w = make_float2(-c1, s1);
  return kInverse ? c_conj(w) : w;
}

// The 16-point DFT of v in place, radix 4 x 4 (n = n1 + 4 n2, k = k1 + 4 k2).
template <bool kInverse>
__device__ __forceinline__ void fft16(float2 (&v)[16]) {
#pragma unroll
  for (int n1 = 0; n1 < 4; ++n1) fft4<kInverse>(v[n1], v[n1 + 4], v[n1 + 8], v[n1 + 12]);
#pragma unroll
  for (int n1 = 1; n1 < 4; ++n1)
#pragma unroll
    for (int k1 = 1; k1 < 4; ++k1) v[n1 + 4 * k1] = c_mul(v[n1 + 4 * k1], w16<kInverse>(n1 * k1));
#pragma unroll
  for (int k1 = 0; k1 < 4; ++k1) fft4<kInverse>(v[4 * k1], v[4 * k1 + 1], v[4 * k1 + 2], v[4 * k1 + 3]);
  float2 out[16];
#pragma unroll
  for (int k1 = 0; k1 < 4; ++k1)
#pragma unroll
    for (int k2 = 0; k2 < 4; ++k2) out[k1 + 4 * k2] = v[4 * k1 + k2];
#pragma unroll
  for (int k = 0; k < 16; ++k) v[k] = out[k];
}

// The 256-point DFT (unnormalised; kInverse takes e^{+i}) of each of the block's kFftsAtOnce
// buffers, in place. steps[k1 * 16 + n1] = e^{-2 pi i n1 k1 / 256}. Every thread of the block must
// call it; it returns synchronised.
template <bool kInverse>
__device__ __forceinline__ void fft256(float2* buffers, const float2* steps) {
  const int lane16 = threadIdx.x & 15;
  float2* b = buffers + (threadIdx.x >> 4) * kFftStride;
  float2 v[16];
  // Pass 1, thread n1: the 16-point DFT over n2 of x[n1 + 16 n2], times W^(n1 k1).
#pragma unroll
  for (int n2 = 0; n2 < 16; ++n2) v[n2] = b[n2 * (kFftRadix + 1) + lane16];
  fft16<kInverse>(v);
#pragma unroll
  for (int k1 = 1; k1 < 16; ++k1) {
    const float2 w = steps[k1 * kFftRadix + lane16];
    v[k1] = c_mul(v[k1], kInverse ? c_conj(w) : w);
  }
  __syncthreads();  // every thread has read its values before any is overwritten
#pragma unroll
  for (int k1 = 0; k1 < 16; ++k1) b[lane16 * (kFftRadix + 1) + k1] = v[k1];
  __syncthreads();
  // Pass 2, thread k1: the 16-point DFT over n1, X[k1 + 16 k2], into the slots it read.
#pragma unroll
  for (int n1 = 0; n1 < 16; ++n1) v[n1] = b[n1 * (kFftRadix + 1) + lane16];
  fft16<kInverse>(v);
#pragma unroll
  for (int k2 = 0; k2 < 16; ++k2) b[k2 * (kFftRadix + 1) + lane16] = v[k2];
  __syncthreads();
}

// The two half spectra (A, B) of two real sequences packed as z = a + i b with Z = DFT(z):
// A[k] = (Z[k] + conj Z[-k]) / 2, B[k] = (Z[k] - conj Z[-k]) / 2i.
__device__ __forceinline__ void split_packed(float2 z_k, float2 z_minus_k, float2& a, float2& b) {
  a = make_float2(0.5f * (z_k.x + z_minus_k.x), 0.5f * (z_k.y - z_minus_k.y));
  b = make_float2(0.5f * (z_k.y + z_minus_k.y), 0.5f * (z_minus_k.x - z_k.x));
}

// The cluster's total of one float per block (`slot` in each block's shared memory), in rank
// order: the same value in every block.
__device__ __forceinline__ float cluster_total(float* slot, bool is_max) {
  float total = 0.f;  // a sum, or a maximum of values >= 0
#pragma unroll
  for (int r = 0; r < kClusterBlocks; ++r) {
    const float v = *cluster_shared(slot, r);
    total = is_max ? fmaxf(total, v) : total + v;
  }
  return total;
}

}  // namespace manipure

// The kernel's dynamic shared memory for n_bands bands (cuda_ops.mani_cluster_shared_bytes).
__host__ __device__ constexpr int mani_cluster_shared_bytes(int n_bands) {
  using namespace manipure;
  return (kFftsAtOnce * kFftStride + kSlabRows * kHalfColumns + kClusterSide) * 8 + (32 + 2 * n_bands + 1) * 4;
}

using namespace manipure;

// One cluster of kClusterBlocks blocks per plane (grid: planes * kClusterBlocks). Dynamic shared
// memory: kFftsAtOnce FFT buffers, the block's 32 rows of half spectrum, the 256 FFT steps, 32
// floats of reduction scratch, n_bands + 1 partial sums (the bands', then the statistic's) and
// n_bands weights. steps: [256] float2, steps[k1 * 16 + n1] = e^{-2 pi i n1 k1 / 256}; band and
// share: the half spectrum's ([256 * 129], as mani_noise_large.cu's).
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(8) mani_noise_cluster_kernel(
    const float* __restrict__ x, const float* __restrict__ noise, float* __restrict__ out,
    float* __restrict__ noise_out, const long long* __restrict__ rng_state, const float2* __restrict__ steps,
    const int* __restrict__ band, const float* __restrict__ share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int has_noise, int store_noise) {
  static_assert(kClusterBlocks == 8, "MANIPURE_CLUSTER_DIMS above is the cluster's block count");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; cuda_ops launches this kernel on such devices only
#else
  extern __shared__ float2 smem_f2[];
  float2* work = smem_f2;                                // kFftsAtOnce FFT buffers
  float2* rows = work + kFftsAtOnce * kFftStride;        // [kSlabRows][kHalfColumns]
  float2* fft_steps = rows + kSlabRows * kHalfColumns;  // [256]
  float* scratch = reinterpret_cast<float*>(fft_steps + kClusterSide);
  float* sums = scratch + 32;          // [n_bands + 1]
  float* weights = sums + n_bands + 1;  // [n_bands]
  constexpr int n = kClusterSide * kClusterSide;
  const int rank = (int)cluster_block_rank();
  const long long base = (long long)(blockIdx.x / kClusterBlocks) * n;
  const int first_row = rank * kSlabRows;
  const int tid = threadIdx.x;

  for (int i = tid; i < kClusterSide; i += blockDim.x) fft_steps[i] = steps[i];

  // 1. rows: FFT buffer j holds rows (first_row + 2j, + 1) as x_a + i x_b.
  for (int e = tid; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int j = e >> 8, col = e & 255;
    const long long row_a = base + (long long)(first_row + 2 * j) * kClusterSide + col;
    work[j * kFftStride + fft_slot(col)] = make_float2(x[row_a], x[row_a + kClusterSide]);
  }
  __syncthreads();
  fft256<false>(work, fft_steps);
  for (int e = tid; e < kFftsAtOnce * kHalfColumns; e += blockDim.x) {
    const int j = e / kHalfColumns, k = e - j * kHalfColumns;
    const float2* b = work + j * kFftStride;
    float2 a_k, b_k;
    split_packed(b[fft_slot(k)], b[fft_slot((kClusterSide - k) & 255)], a_k, b_k);
    rows[(2 * j) * kHalfColumns + k] = a_k;
    rows[(2 * j + 1) * kHalfColumns + k] = b_k;
  }
  cluster_sync();  // every block's row spectra are in place

  // 2. columns: buffer c holds column 16 rank + c over all 256 rows, block 0's buffer 0 the real
  //    columns 0 and 128 as one complex column (their imaginary parts are zero: split_packed
  //    gives k = 0 and k = N/2 exactly real).
  for (int e = tid; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int kh = e >> 4, c = e & 15;
    const float2* peer_row = cluster_shared(rows, kh / kSlabRows) + (kh % kSlabRows) * kHalfColumns;
    const float2 value = rank == 0 && c == 0 ? make_float2(peer_row[0].x, peer_row[kClusterSide / 2].x)
                                             : peer_row[rank * kSlabColumns + c];
    work[c * kFftStride + fft_slot(kh)] = value;
  }
  __syncthreads();
  fft256<false>(work, fft_steps);

  // 3. bands. Coefficient idx < 16 * 256 is (kh = idx / 16, column 16 rank + idx % 16); block 0
  //    also has column 128, idx - 16 * 256 = kh. Block 0's packed buffer C gives
  //    F[kh][0] = (C[kh] + conj C[-kh]) / 2 and F[kh][128] = (C[kh] - conj C[-kh]) / 2i.
  const int packed_extra = rank == 0 ? kClusterSide : 0;
  auto column_of = [&](int idx) {
    return idx >= kFftsAtOnce * kClusterSide ? kClusterSide / 2 : rank * kSlabColumns + (idx & 15);
  };
  auto row_of = [&](int idx) { return idx >= kFftsAtOnce * kClusterSide ? idx - kFftsAtOnce * kClusterSide : idx >> 4; };
  auto coefficient = [&](int idx) {
    const int kh = row_of(idx), column = column_of(idx);
    if (column != 0 && column != kClusterSide / 2) return work[(column - rank * kSlabColumns) * kFftStride + fft_slot(kh)];
    float2 f0, f_half;
    split_packed(work[fft_slot(kh)], work[fft_slot((kClusterSide - kh) & 255)], f0, f_half);
    return column == 0 ? f0 : f_half;
  };
  band_sums_of(
      [&](int idx) { return band[row_of(idx) * kHalfColumns + column_of(idx)]; },
      kFftsAtOnce * kClusterSide + packed_extra, n_bands, scratch,
      [&](int idx) {
        const float2 f = coefficient(idx);
        return hypotf(f.x, f.y) * share[row_of(idx) * kHalfColumns + column_of(idx)];
      },
      [&](int b, float total) {
        if (tid == 0) sums[b] = total;
      });
  cluster_sync();  // every block's band sums are in place
  for (int b = tid; b < n_bands; b += blockDim.x) {
    // powf(0, gamma) = 0 for gamma > 0, as torch.pow: an all-zero band weighs 1 / eps0.
    weights[b] = 1.0f / (powf(cluster_total(sums + b, false), gamma) + eps0);
  }
  __syncthreads();
  for (int e = tid; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int kh = e >> 4, c = e & 15;
    if (rank == 0 && c == 0) {
      // The packed column, one thread per pair (kh, -kh): G[.][0] and G[.][128] are Hermitian
      // (the band map is symmetric under k -> -k), so C' = G0 + i G128 packs them again.
      if (kh > kClusterSide / 2) continue;
      const int minus = (kClusterSide - kh) & 255;
      float2 f0, f_half;
      split_packed(work[fft_slot(kh)], work[fft_slot(minus)], f0, f_half);
      const float w0 = weights[band[kh * kHalfColumns]], w_half = weights[band[kh * kHalfColumns + kClusterSide / 2]];
      const float2 g0 = weight_kernel ? make_float2(w0, 0.f) : make_float2(w0 * f0.x, w0 * f0.y);
      const float2 g_half = weight_kernel ? make_float2(w_half, 0.f) : make_float2(w_half * f_half.x, w_half * f_half.y);
      work[fft_slot(kh)] = make_float2(g0.x - g_half.y, g0.y + g_half.x);
      work[fft_slot(minus)] = make_float2(g0.x + g_half.y, g_half.x - g0.y);
      continue;
    }
    float2& f = work[c * kFftStride + fft_slot(kh)];
    const float wb = weights[band[kh * kHalfColumns + rank * kSlabColumns + c]];
    f = weight_kernel ? make_float2(wb, 0.f) : make_float2(f.x * wb, f.y * wb);
  }
  __syncthreads();

  // 4. inverse: the columns, then block r's rows back from the cluster, two real rows per FFT.
  fft256<true>(work, fft_steps);
  cluster_sync();  // every block's inverse columns are in place
  for (int e = tid; e < kSlabRows * kHalfColumns; e += blockDim.x) {
    const int column = e / kSlabRows, lr = e % kSlabRows, h = first_row + lr;
    float2 value;
    if (column == 0 || column == kClusterSide / 2) {
      const float2 packed = cluster_shared(work, 0)[fft_slot(h)];
      value = make_float2(column == 0 ? packed.x : packed.y, 0.f);
    } else {
      value = cluster_shared(work, column / kSlabColumns)[(column % kSlabColumns) * kFftStride + fft_slot(h)];
    }
    rows[lr * kHalfColumns + column] = value;
  }
  cluster_sync();  // no block reads another's FFT buffers any more
  for (int e = tid; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int j = e >> 8, k = e & 255;
    const bool mirrored = k > kClusterSide / 2;  // the half spectra's Hermitian extension
    const int source = mirrored ? kClusterSide - k : k;
    float2 a = rows[(2 * j) * kHalfColumns + source], b = rows[(2 * j + 1) * kHalfColumns + source];
    if (mirrored) a = c_conj(a), b = c_conj(b);
    work[j * kFftStride + fft_slot(k)] = make_float2(a.x - b.y, a.y + b.x);  // a + i b
  }
  __syncthreads();
  fft256<true>(work, fft_steps);

  // 5. inject. Pixel (first_row + lr, col) of Y is 1/n times the real (lr even) or imaginary (lr
  //    odd) part of FFT buffer lr / 2's value col, as irfft2 normalises.
  const float inv_n = 1.0f / (float)n;
  auto map_at = [&](int lr, int col) {
    const float2 z = work[(lr >> 1) * kFftStride + fft_slot(col)];
    return fabsf(((lr & 1) ? z.y : z.x) * inv_n);
  };
  float scale = 1.f;
  if (normalize != 0) {
    float local = 0.f;
    for (int e = tid; e < kSlabRows * kClusterSide; e += blockDim.x) {
      const float m = map_at(e >> 8, e & 255);
      local = normalize == 1 ? local + m * m : fmaxf(local, m);
    }
    const float block_total = block_reduce(local, scratch, normalize == 2);
    if (tid == 0) sums[n_bands] = block_total;
    cluster_sync();
    const float total = cluster_total(sums + n_bands, normalize == 2);
    scale = normalize == 1 ? sqrtf(total / (float)n) : total;
  }
  for (int e = tid; e < kSlabRows * kClusterSide; e += blockDim.x) {
    const int lr = e >> 8, col = e & 255;
    const long long el = base + (long long)(first_row + lr) * kClusterSide + col;
    const float m = map_at(lr, col);
    const float map = normalize == 0 ? m : (scale > 0.f ? m / scale : 1.0f);
    const float z = has_noise ? noise[el] : philox_normal(rng_state, (unsigned long long)el);
    if (store_noise) noise_out[el] = z;
    out[el] = x[el] * signal + (map * z) * noise_scale;
  }
  cluster_sync();  // no block returns while another may still read its shared memory
#endif
}
