// The stages of the MANI kernels on thread-block clusters (mani_noise_cluster.cu and its backward,
// mani_noise_cluster_backward.cu): a 256 x 256 plane's real 2-D FFT and its inverse, spread over a
// cluster of eight blocks that hold the plane's half spectrum in their shared memory, and sums over
// the plane. One definition, so the backward recomputes exactly what the forward computed.
//
// Layout. Block r of a plane's cluster holds, in `rows`, rows 32r..32r+31 of a half spectrum
// (129 columns), and in `work` sixteen 256-point FFT buffers: two real rows per buffer as
// x_a + i x_b on the pixel side, or, on the spectrum side, the half spectrum's columns
// 16r..16r+15 over all 256 rows (the slab). Block 0's buffer 0 holds the real columns 0 and 128
// as one complex column C = F[.][0] + i F[.][128] (both are Hermitian in kh, so
// F[kh][0] = (C[kh] + conj C[-kh]) / 2 and F[kh][128] = (C[kh] - conj C[-kh]) / 2i).
//
// Every 256-point FFT is 16 x 16: a thread per 16-point column transform in registers (radix 4 x
// 4), the twiddles W^(n1 k1), and a thread per 16-point row transform. A block runs 16 FFTs at a
// time with 16 threads each. Each FFT's 256 values sit in a buffer of 16 rows of 17 float2 (value
// n at (n / 16) * 17 + n % 16, plus one float2 of padding per buffer): the padding keeps both
// passes' shared-memory accesses, and the column gather's writes, free of bank conflicts.
#ifndef MANIPURE_MANI_CLUSTER_STAGES_CUH
#define MANIPURE_MANI_CLUSTER_STAGES_CUH

#include "mani_stages.cuh"

namespace manipure {

constexpr int kClusterSide = 256;                          // the plane side these kernels are written for
constexpr int kClusterBlocks = 8;                          // blocks per plane: the cluster (see the kernels)
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
// order: the same value in every block. Call it after a cluster barrier that follows the writes.
__device__ __forceinline__ float cluster_total(float* slot, bool is_max) {
  float total = 0.f;  // a sum, or a maximum of values >= 0
#pragma unroll
  for (int r = 0; r < kClusterBlocks; ++r) {
    const float v = *cluster_shared(slot, r);
    total = is_max ? fmaxf(total, v) : total + v;
  }
  return total;
}

// One block's view of its plane: its rank, its buffers (the same offsets in every block of the
// cluster) and the FFT steps.
struct ClusterPlane {
  float2* work;         // kFftsAtOnce FFT buffers of kFftStride float2
  float2* rows;         // [kSlabRows][kHalfColumns]
  float2* steps;        // [256]: steps[k1 * 16 + n1] = e^{-2 pi i n1 k1 / 256}
  int rank;             // in the cluster
  int first_row;        // rank * kSlabRows
  long long base;       // the plane's first pixel in the [planes, 256, 256] tensors

  // Where pixel (first_row + lr, col) of the plane is.
  __device__ __forceinline__ long long pixel_index(int lr, int col) const {
    return base + (long long)(first_row + lr) * kClusterSide + col;
  }
  // The floats after the buffers: the caller's.
  __device__ __forceinline__ float* floats() const { return reinterpret_cast<float*>(steps + kClusterSide); }
};

// The block's view over dynamic shared memory laid out as cluster_shared_bytes counts it: `slabs`
// slabs (the first is `work`), the rows, and the FFT steps, loaded here from `steps`. One cluster
// of kClusterBlocks blocks per plane. Every thread of the block must call it; it returns
// synchronised.
__device__ __forceinline__ ClusterPlane cluster_plane(float2* smem, int slabs, const float2* steps) {
  float2* rows = smem + slabs * kFftsAtOnce * kFftStride;
  float2* fft_steps = rows + kSlabRows * kHalfColumns;
  for (int i = threadIdx.x; i < kClusterSide; i += blockDim.x) fft_steps[i] = steps[i];
  __syncthreads();
  const int rank = (int)cluster_block_rank();
  const long long base = (long long)(blockIdx.x / kClusterBlocks) * kClusterSide * kClusterSide;
  return ClusterPlane{smem, rows, fft_steps, rank, rank * kSlabRows, base};
}

// The real 2-D FFT of a plane, from pixel(lr, col), the value at row first_row + lr: rows, then
// columns. Leaves the slab of the half spectrum in `work` (block 0's packed column included).
// Every thread of every block of the cluster must call it; it returns synchronised.
template <typename Pixel>
__device__ __forceinline__ void cluster_rfft2(const ClusterPlane& p, Pixel pixel) {
  for (int e = threadIdx.x; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int j = e >> 8, col = e & 255;
    p.work[j * kFftStride + fft_slot(col)] = make_float2(pixel(2 * j, col), pixel(2 * j + 1, col));
  }
  __syncthreads();
  fft256<false>(p.work, p.steps);
  for (int e = threadIdx.x; e < kFftsAtOnce * kHalfColumns; e += blockDim.x) {
    const int j = e / kHalfColumns, k = e - j * kHalfColumns;
    const float2* b = p.work + j * kFftStride;
    float2 a_k, b_k;
    split_packed(b[fft_slot(k)], b[fft_slot((kClusterSide - k) & 255)], a_k, b_k);
    p.rows[(2 * j) * kHalfColumns + k] = a_k;
    p.rows[(2 * j + 1) * kHalfColumns + k] = b_k;
  }
  cluster_sync();  // every block's row spectra are in place
  // The columns: block 0's columns 0 and 128 are real (split_packed gives k = 0 and k = N/2
  // exactly real), packed as one complex column.
  for (int e = threadIdx.x; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int kh = e >> 4, c = e & 15;
    const float2* peer_row = cluster_shared(p.rows, kh / kSlabRows) + (kh % kSlabRows) * kHalfColumns;
    const float2 value = p.rank == 0 && c == 0 ? make_float2(peer_row[0].x, peer_row[kClusterSide / 2].x)
                                               : peer_row[p.rank * kSlabColumns + c];
    p.work[c * kFftStride + fft_slot(kh)] = value;
  }
  __syncthreads();
  fft256<false>(p.work, p.steps);
}

// The slab's coefficients, for sums over them: idx < 16 * 256 is (kh = idx / 16, column
// 16 rank + idx % 16), and block 0 also has column 128 at idx - 16 * 256 = kh.
__device__ __forceinline__ int slab_size(int rank) { return kFftsAtOnce * kClusterSide + (rank == 0 ? kClusterSide : 0); }
__device__ __forceinline__ int slab_row(int idx) {
  return idx >= kFftsAtOnce * kClusterSide ? idx - kFftsAtOnce * kClusterSide : idx >> 4;
}
__device__ __forceinline__ int slab_column(int rank, int idx) {
  return idx >= kFftsAtOnce * kClusterSide ? kClusterSide / 2 : rank * kSlabColumns + (idx & 15);
}
// Coefficient idx of a slab (`work`'s layout) of block `rank`.
__device__ __forceinline__ float2 slab_coefficient(const float2* slab, int rank, int idx) {
  const int kh = slab_row(idx), column = slab_column(rank, idx);
  if (column != 0 && column != kClusterSide / 2) return slab[(column - rank * kSlabColumns) * kFftStride + fft_slot(kh)];
  float2 f0, f_half;
  split_packed(slab[fft_slot(kh)], slab[fft_slot((kClusterSide - kh) & 255)], f0, f_half);
  return column == 0 ? f0 : f_half;
}

// slab[k] = map(kh, column, slab[k], other[k]) for every coefficient of the block's slab, in
// place; `other` is a second slab read beside it (or nullptr). On block 0's packed column map
// runs on both real columns' coefficients at kh and the result is packed again at kh and -kh:
// map must keep a Hermitian column Hermitian (a real weight per band does, the band map being
// symmetric under k -> -k). Every thread of the block must call it; it returns synchronised.
template <typename Map>
__device__ __forceinline__ void slab_map(float2* slab, const float2* other, int rank, Map map) {
  const float2 none = make_float2(0.f, 0.f);
  for (int e = threadIdx.x; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int kh = e >> 4, c = e & 15;
    if (rank == 0 && c == 0) {
      if (kh > kClusterSide / 2) continue;  // one thread per pair (kh, -kh)
      const int minus = (kClusterSide - kh) & 255;
      float2 f0, f_half, o0 = none, o_half = none;
      split_packed(slab[fft_slot(kh)], slab[fft_slot(minus)], f0, f_half);
      if (other != nullptr) split_packed(other[fft_slot(kh)], other[fft_slot(minus)], o0, o_half);
      const float2 g0 = map(kh, 0, f0, o0), g_half = map(kh, kClusterSide / 2, f_half, o_half);
      slab[fft_slot(kh)] = make_float2(g0.x - g_half.y, g0.y + g_half.x);       // g0 + i g_half
      slab[fft_slot(minus)] = make_float2(g0.x + g_half.y, g_half.x - g0.y);    // conj g0 + i conj g_half
      continue;
    }
    const int at = c * kFftStride + fft_slot(kh);
    slab[at] = map(kh, rank * kSlabColumns + c, slab[at], other != nullptr ? other[at] : none);
  }
  __syncthreads();
}

// The inverse of cluster_rfft2 (unnormalised: N times irfft2): from the slab in `work`, the
// columns' inverse FFTs, then block r's rows back from the cluster, two real rows per FFT. Leaves
// row first_row + lr at FFT buffer lr / 2 of `work`, in its real (lr even) or imaginary (lr odd)
// parts (see cluster_pixel). Every thread of every block of the cluster must call it; it returns
// synchronised.
__device__ __forceinline__ void cluster_irfft2(const ClusterPlane& p) {
  fft256<true>(p.work, p.steps);
  cluster_sync();  // every block's inverse columns are in place
  for (int e = threadIdx.x; e < kSlabRows * kHalfColumns; e += blockDim.x) {
    const int column = e / kSlabRows, lr = e % kSlabRows, h = p.first_row + lr;
    float2 value;
    if (column == 0 || column == kClusterSide / 2) {
      const float2 packed = cluster_shared(p.work, 0)[fft_slot(h)];
      value = make_float2(column == 0 ? packed.x : packed.y, 0.f);
    } else {
      value = cluster_shared(p.work, column / kSlabColumns)[(column % kSlabColumns) * kFftStride + fft_slot(h)];
    }
    p.rows[lr * kHalfColumns + column] = value;
  }
  cluster_sync();  // no block reads another's FFT buffers any more
  for (int e = threadIdx.x; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
    const int j = e >> 8, k = e & 255;
    const bool mirrored = k > kClusterSide / 2;  // the half spectra's Hermitian extension
    const int source = mirrored ? kClusterSide - k : k;
    float2 a = p.rows[(2 * j) * kHalfColumns + source], b = p.rows[(2 * j + 1) * kHalfColumns + source];
    if (mirrored) a = c_conj(a), b = c_conj(b);
    p.work[j * kFftStride + fft_slot(k)] = make_float2(a.x - b.y, a.y + b.x);  // a + i b
  }
  __syncthreads();
  fft256<true>(p.work, p.steps);
}

// Pixel (first_row + lr, col) of cluster_irfft2's result.
__device__ __forceinline__ float cluster_pixel(const ClusterPlane& p, int lr, int col) {
  const float2 z = p.work[(lr >> 1) * kFftStride + fft_slot(col)];
  return (lr & 1) ? z.y : z.x;
}

// The band means (into `means`, when given) and weights w_b = 1 / (M_b^gamma + eps0) of the slab
// in `work`: each block's sums of share |F|, then the cluster's in rank order. Uses sums[0, n_bands).
// Every thread of every block of the cluster must call it; it returns synchronised.
__device__ __forceinline__ void cluster_band_weights(const ClusterPlane& p, const int* band, const float* share,
                                                     int n_bands, float gamma, float eps0, float* scratch,
                                                     float* sums, float* means, float* weights) {
  band_sums_of(
      [&](int idx) { return band[slab_row(idx) * kHalfColumns + slab_column(p.rank, idx)]; }, slab_size(p.rank),
      n_bands, scratch,
      [&](int idx) {
        const float2 f = slab_coefficient(p.work, p.rank, idx);
        return hypotf(f.x, f.y) * share[slab_row(idx) * kHalfColumns + slab_column(p.rank, idx)];
      },
      [&](int b, float total) {
        if (threadIdx.x == 0) sums[b] = total;
      });
  cluster_sync();  // every block's band sums are in place
  for (int b = threadIdx.x; b < n_bands; b += blockDim.x) {
    const float mean = cluster_total(sums + b, false);
    if (means != nullptr) means[b] = mean;
    // powf(0, gamma) = 0 for gamma > 0, as torch.pow: an all-zero band weighs 1 / eps0.
    weights[b] = 1.0f / (powf(mean, gamma) + eps0);
  }
  __syncthreads();
}

// The normalisation statistic of the map |Y| over the plane (map(lr, col) = |Y| at the block's
// pixel): sqrt(mean |Y|^2) for normalize 1 (rms), max |Y| for 2 (max), 1 for 0 (none), on every
// thread of every block. Uses *slot. Every thread of every block of the cluster must call it.
template <typename Map>
__device__ __forceinline__ float cluster_map_scale(Map map, int normalize, float* scratch, float* slot) {
  if (normalize == 0) return 1.f;
  float local = 0.f;
  for (int e = threadIdx.x; e < kSlabRows * kClusterSide; e += blockDim.x) {
    const float m = map(e >> 8, e & 255);
    local = normalize == 1 ? local + m * m : fmaxf(local, m);
  }
  const float block_total = block_reduce(local, scratch, normalize == 2);
  if (threadIdx.x == 0) *slot = block_total;
  cluster_sync();
  const float total = cluster_total(slot, normalize == 2);
  return normalize == 1 ? sqrtf(total / (float)(kClusterSide * kClusterSide)) : total;
}

// MANI's map before its normalisation, from the plane x: F = rfft2(x); the band means (into
// `means`, when given) and weights; G = w[band] F ("spectral") or w[band] (weight_kernel); and
// N Y = irfft2(G) in `work` (cluster_pixel). With `spectrum`, F is kept there (a second slab).
// Uses sums[0, n_bands). Every thread of every block of the cluster must call it; it returns
// synchronised.
__device__ __forceinline__ void cluster_unnormalised_map(const ClusterPlane& p, const float* x, const int* band,
                                                         const float* share, int n_bands, float gamma, float eps0,
                                                         int weight_kernel, float* scratch, float* sums,
                                                         float* means, float* weights, float2* spectrum) {
  cluster_rfft2(p, [&](int lr, int col) { return x[p.pixel_index(lr, col)]; });
  cluster_band_weights(p, band, share, n_bands, gamma, eps0, scratch, sums, means, weights);
  if (spectrum != nullptr) {
    for (int e = threadIdx.x; e < kFftsAtOnce * kClusterSide; e += blockDim.x) {
      const int at = (e >> 8) * kFftStride + fft_slot(e & 255);
      spectrum[at] = p.work[at];
    }
    __syncthreads();  // F is copied before G replaces it
  }
  slab_map(p.work, nullptr, p.rank, [&](int kh, int column, float2 f, float2) {
    const float wb = weights[band[kh * kHalfColumns + column]];
    return weight_kernel ? make_float2(wb, 0.f) : make_float2(f.x * wb, f.y * wb);
  });
  cluster_irfft2(p);
}

// The kernels' dynamic shared memory: `slabs` FFT-buffer sets (the forward 1, the backward 2), the
// rows, the FFT steps; then 32 floats of scratch and `floats` more.
__host__ __device__ constexpr int cluster_shared_bytes(int slabs, int floats) {
  return (slabs * kFftsAtOnce * kFftStride + kSlabRows * kHalfColumns + kClusterSide) * 8 + (32 + floats) * 4;
}

}  // namespace manipure

#endif  // MANIPURE_MANI_CLUSTER_STAGES_CUH
