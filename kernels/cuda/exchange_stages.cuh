// The stages the exchange kernels share (exchange_update.cu, exchange_update_backward.cu and their
// cluster versions): the x0 predictions, both band spectra, the exchange of one band coefficient and
// its gradient, the band-only inverse column and row transforms, and the backward's stages.
// One definition, so the backward recomputes exactly what the forward computed. Include guards
// rather than #pragma once, because the JIT loader inlines this file into each kernel source.
#ifndef MANIPURE_EXCHANGE_STAGES_CUH
#define MANIPURE_EXCHANGE_STAGES_CUH

#include "manipure_common.cuh"

namespace manipure {

struct ExchangeCoefficients {
  float sqrt_abar, sqrt_one_minus_abar;          // step t
  float ref_sqrt_abar, ref_sqrt_one_minus_abar;  // the reference's t_f
  float sqrt_abar_next, c1, c2;                  // the DDPM/DDIM update
  float delta;                                   // "project" phase tolerance
};

// x0 = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t) at element e.
__device__ __forceinline__ float predicted_x0(const float* x_t, const float* eps, long long e,
                                              const ExchangeCoefficients& k) {
  return (x_t[e] - eps[e] * k.sqrt_one_minus_abar) / k.sqrt_abar;
}

// The reference estimate's x0 at element e: from (ref_t, eps_ref) at t_f, or ref_t itself.
__device__ __forceinline__ float reference_x0(const float* ref_t, const float* eps_ref, long long e,
                                              int has_eps_ref, const ExchangeCoefficients& k) {
  return has_eps_ref ? (ref_t[e] - eps_ref[e] * k.ref_sqrt_one_minus_abar) / k.ref_sqrt_abar : ref_t[e];
}

// The widest row the band row transforms take (cuda_ops and torch_library.cpp refuse wider
// planes): each lane of a warp holds kRowPixelsPerLane pixels of a row in registers.
constexpr int kMaxRowWidth = 256;
constexpr int kRowPixelsPerLane = kMaxRowWidth / 32;
// Rows a warp transforms together: each twiddle it loads serves this many rows.
constexpr int kRowsPerWarp = 2;
static_assert(kRowsPerWarp == 2, "band_row_transforms reduces 4 sums of 2 rows with warp_sums_of_eight");

// The warp's sums of eight values per lane, in 12 shuffles rather than 40: each butterfly step
// sends away half of the values a lane still holds, so after three steps lane L holds a partial
// sum of value L >> 2, which two more steps complete. The last three shuffles gather, in lanes 0
// and 16, the four sums of values 0-3 and 4-7: `sums` gets them there (undefined elsewhere).
// Every lane of the warp must call it.
__device__ __forceinline__ void warp_sums_of_eight(const float (&v)[8], float (&sums)[4]) {
  const unsigned int full = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  float four[4], two[2];
  const bool upper16 = (lane & 16) != 0, upper8 = (lane & 8) != 0, upper4 = (lane & 4) != 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    four[i] = (upper16 ? v[i + 4] : v[i]) + __shfl_xor_sync(full, upper16 ? v[i] : v[i + 4], 16);
#pragma unroll
  for (int i = 0; i < 2; ++i)
    two[i] = (upper8 ? four[i + 2] : four[i]) + __shfl_xor_sync(full, upper8 ? four[i] : four[i + 2], 8);
  float one = (upper4 ? two[1] : two[0]) + __shfl_xor_sync(full, upper4 ? two[0] : two[1], 4);
  one += __shfl_xor_sync(full, one, 2);
  one += __shfl_xor_sync(full, one, 1);
  // Lane L now holds the sum of value L >> 2; lane 0 (16) takes those of lanes 4, 8 and 12 (20, 24, 28).
  sums[0] = one;
  sums[1] = __shfl_xor_sync(full, one, 4);
  sums[2] = __shfl_xor_sync(full, one, 8);
  sums[3] = __shfl_xor_sync(full, one, 12);
}

// ---- pairing theta and -theta ---------------------------------------------------------------------
// The band is listed in FFT order, so frequency j's mirror (-theta_j) is K - j, and
// dft_tables.band_tables makes their twiddles share cos and negate sin exactly. The transforms
// below use that: the row transforms of real rows sum only frequencies 0..K/2 and take the others
// from their mirrors (the same bits), and the column and inverse transforms take both frequencies
// of a pair in one thread, which loads each twiddle once for both and, in the column and inverse
// row transforms, halves the multiply-adds (other arithmetic, the same accuracy):
//   column:   sum_h G e^{-/+ i theta h} = P -/+ i Q, with P = sum_h G cos, Q = sum_h G sin;
//   inverse:  E[j] e^{i theta w} + E[K-j] e^{-i theta w} = S cos + i D sin, S, D = E[j] +/- E[K-j].
// MANIPURE_UNPAIRED_FREQUENCIES=1 compiles the column and inverse transforms unpaired (the bits of
// the code before the pairing): bench/tune_cuda.py times them. The row transforms' mirrors have their
// own switch, below.
#ifndef MANIPURE_UNPAIRED_FREQUENCIES
#define MANIPURE_UNPAIRED_FREQUENCIES 0
#endif
constexpr bool kPairedFrequencies = !MANIPURE_UNPAIRED_FREQUENCIES;

// The frequencies a paired loop walks (0..K/2, or all K unpaired), and whether frequency j has a
// distinct mirror K - j (0 and, for even K, K/2 are their own).
__device__ __forceinline__ int paired_count(int K) { return kPairedFrequencies ? K / 2 + 1 : K; }
__device__ __forceinline__ bool has_mirror(int j, int K) { return kPairedFrequencies && j > 0 && K - j != j; }

// acc + the pair's term: S (c + i s) with the sin part taken from D (D = S for a frequency without
// a mirror, which makes it twiddle_mac's E (c + i s), in its order of operations).
__device__ __forceinline__ float2 paired_mac(float2 acc, float2 S, float2 D, float c, float s) {
  acc.x += S.x * c - D.y * s;
  acc.y += D.x * s + S.y * c;
  return acc;
}

// Row transforms of kImages (1 or 2) real images of one plane onto the band columns: for every row
// h, band column j and image m, the sums over w of v_m[h][w] cos(theta_j w) and v_m[h][w]
// sin(theta_j w), handed to store(h, j, sums) with sums[2 m] the cos and sums[2 m + 1] the sin sum.
// A warp takes 4 / kImages rows at a time, so that each lane sums eight values (2 per image and
// row) for warp_sums_of_eight. Each lane holds the pixels w = lane + 32 t of them, given once by
// load(h, w, pixels) (pixels[m] of image m), so each pixel is computed once, and the twiddle reads
// are coalesced. It needs W <= kMaxRowWidth and a block of whole warps; it neither starts nor ends
// with a barrier.
// The rows are real, so column KW - j (frequency -theta_j: the band is listed in FFT order) has
// the cos sums of column j and its sin sums negated. Only columns 0..KW/2 are summed, and the
// others stored from them: 11 of 21 at R = 10. The twiddles of -theta_j are exactly those of
// theta_j with sin negated (dft_tables.band_tables makes them so), so the stored sums are the
// bits that summing column KW - j itself would give. MANIPURE_SUM_EVERY_BAND_COLUMN=1 sums every
// column instead: bench/tune_cuda.py times it, and a test checks that the bits agree.
#ifndef MANIPURE_SUM_EVERY_BAND_COLUMN
#define MANIPURE_SUM_EVERY_BAND_COLUMN 0
#endif
template <int kImages, typename Load, typename Store>
__device__ __forceinline__ void band_row_transforms(int H, int W, int KW, const float* cos_w, const float* sin_w,
                                                    Load load, Store store) {
  static_assert(kImages == 1 || kImages == 2, "band_row_transforms takes one or two images");
  constexpr int kRows = 4 / kImages;      // rows a warp takes together: 8 sums per lane
  constexpr int kSumsPerRow = 2 * kImages;  // cos and sin per image
  constexpr int kRowsPerGather = kRows / 2;  // warp_sums_of_eight gathers 4 sums in lanes 0 and 16
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int h0 = (threadIdx.x >> 5) * kRows; h0 < H; h0 += warps * kRows) {
    float v[kRows][kImages][kRowPixelsPerLane];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < kRowPixelsPerLane; ++t) {
        const int w = lane + 32 * t;
        float pixels[kImages];
#pragma unroll
        for (int m = 0; m < kImages; ++m) pixels[m] = 0.f;
        if (h0 + r < H && w < W) load(h0 + r, w, pixels);
#pragma unroll
        for (int m = 0; m < kImages; ++m) v[r][m][t] = pixels[m];
      }
    constexpr bool kMirrored = !MANIPURE_SUM_EVERY_BAND_COLUMN;
    for (int j = 0; j < (kMirrored ? KW / 2 + 1 : KW); ++j) {
      float partial[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // row r, image m: cos, sin at (r kImages + m) 2
#pragma unroll
      for (int t = 0; t < kRowPixelsPerLane; ++t) {
        const int w = lane + 32 * t;
        if (w < W) {
          const float c = cos_w[j * W + w], s = sin_w[j * W + w];
#pragma unroll
          for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int m = 0; m < kImages; ++m) {
              partial[(r * kImages + m) * 2] += v[r][m][t] * c;
              partial[(r * kImages + m) * 2 + 1] += v[r][m][t] * s;
            }
        }
      }
      float sums[4];
      warp_sums_of_eight(partial, sums);
      const int mirror = KW - j;
      if ((lane & 15) == 0) {
#pragma unroll
        for (int g = 0; g < kRowsPerGather; ++g) {
          const int h = h0 + (lane >> 4) * kRowsPerGather + g;
          if (h >= H) break;
          const float* row = sums + g * kSumsPerRow;
          store(h, j, row);
          if (kMirrored && j > 0 && mirror != j) {
            float conjugate[kSumsPerRow];
#pragma unroll
            for (int q = 0; q < kSumsPerRow; ++q) conjugate[q] = (q & 1) ? -row[q] : row[q];
            store(h, mirror, conjugate);
          }
        }
      }
    }
  }
}

// F[i][j] = scale * sum_h G[h][j] e^{-i theta_i h}, the band's column transform over the `rows`
// rows from h0 ([rows x KW] -> [KH x KW]), and F2 from G2 when kTwo. A thread takes frequencies i
// and KH - i of a column (P -/+ i Q, above). Every thread of the block must call it; it returns
// synchronised.
template <bool kTwo = false>
__device__ __forceinline__ void band_columns(const float2* G, float2* F, const float* cos_h, const float* sin_h,
                                             int H, int KH, int KW, float scale, int h0, int rows,
                                             const float2* G2 = nullptr, float2* F2 = nullptr) {
  const int outputs = paired_count(KH) * KW;  // (i, j) with i up to KH/2; mirror: (KH - i, j)
  for (int idx = threadIdx.x; idx < outputs; idx += blockDim.x) {
    const int i = idx / KW, j = idx - i * KW, mirror = (KH - i) * KW + j;
    float2 p = make_float2(0.f, 0.f), q = p, p2 = p, q2 = p;
    for (int h = 0; h < rows; ++h) {
      const float c = cos_h[i * H + h0 + h], s = sin_h[i * H + h0 + h];
      const float2 g = G[h * KW + j];
      if constexpr (kPairedFrequencies) {
        p = make_float2(p.x + g.x * c, p.y + g.y * c);
        q = make_float2(q.x + g.x * s, q.y + g.y * s);
      } else {  // the unpaired loop: twiddle_mac at e^{-i theta}, into p
        p = twiddle_mac(p, g, c, -s);
      }
      if constexpr (kTwo) {
        const float2 g2 = G2[h * KW + j];
        if constexpr (kPairedFrequencies) {
          p2 = make_float2(p2.x + g2.x * c, p2.y + g2.y * c);
          q2 = make_float2(q2.x + g2.x * s, q2.y + g2.y * s);
        } else {
          p2 = twiddle_mac(p2, g2, c, -s);
        }
      }
    }
    // P - i Q, and P + i Q at the mirror (q stays 0 unpaired)
    F[idx] = make_float2((p.x + q.y) * scale, (p.y - q.x) * scale);
    if (has_mirror(i, KH)) F[mirror] = make_float2((p.x - q.y) * scale, (p.y + q.x) * scale);
    if constexpr (kTwo) {
      F2[idx] = make_float2((p2.x + q2.y) * scale, (p2.y - q2.x) * scale);
      if (has_mirror(i, KH)) F2[mirror] = make_float2((p2.x - q2.y) * scale, (p2.y + q2.x) * scale);
    }
  }
  __syncthreads();
}

// Both pixel images' band spectra: row transforms G[h][j] = sum_w v[h][w] e^{-i theta_j w} into
// Gp, Gq [H x KW], then F[i][j] = sum_h G[h][j] e^{-i theta_i h} into Fp, Fq [KH x KW]. Given
// `rows` rows from h0 (exchange_update_cluster.cu's slabs), G holds those rows (row h0 + h at h)
// and F their share of the sum. Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void band_spectra(
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, long long base,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w, int H, int W, int KH,
    int KW, const ExchangeCoefficients& k, int has_eps_ref, float2* Gp, float2* Gq, float2* Fp, float2* Fq,
    int h0 = 0, int rows = -1) {
  if (rows < 0) rows = H;
  band_row_transforms<2>(
      rows, W, KW, cos_w, sin_w,
      [&](int h, int w, float* pixels) {
        const long long e = base + (long long)(h0 + h) * W + w;
        pixels[0] = to_pixels(predicted_x0(x_t, eps, e, k));
        pixels[1] = to_pixels(reference_x0(ref_t, eps_ref, e, has_eps_ref, k));
      },
      [&](int h, int j, const float* sums) {  // p's cos, sin; q's cos, sin
        Gp[h * KW + j] = make_float2(sums[0], -sums[1]);
        Gq[h * KW + j] = make_float2(sums[2], -sums[3]);
      });
  __syncthreads();
  band_columns<true>(Gp, Fp, cos_h, sin_h, H, KH, KW, 1.0f, h0, rows, Gq, Fq);
}

// One band coefficient of the exchange (SPEC §2.2), for F_p (x0's) and F_q (the reference's).
struct ExchangeMix {
  float2 delta;         // F_out - F_p; zero outside both discs
  float amp, c, s;      // F_out = amp (c + i s)
  float amp_p, amp_q;   // |F_p|, |F_q|
  bool phase_from_ref;  // the output phase follows F_q (its derivative goes there)
};

__device__ __forceinline__ ExchangeMix exchange_mix(float2 fp, float2 fq, bool in_amp, bool in_phase,
                                                    int phase_project, float delta) {
  const float two_pi = 6.283185307179586f, pi = 3.141592653589793f;
  ExchangeMix m;
  m.amp_p = hypotf(fp.x, fp.y);
  m.amp_q = hypotf(fq.x, fq.y);
  m.phase_from_ref = false;
  m.amp = m.amp_p;
  m.c = 1.f;
  m.s = 0.f;
  m.delta = make_float2(0.f, 0.f);
  if (!(in_amp || in_phase)) return m;
  const float phase_p = atan2f(fp.y, fp.x), phase_q = atan2f(fq.y, fq.x);
  float phase = phase_p;
  if (in_phase) {
    if (phase_project) {
      // (phase_p - phase_q + pi) mod 2 pi - pi, as torch.remainder (result in [0, 2 pi)).
      float diff = phase_p - phase_q + pi;
      diff = diff - two_pi * floorf(diff / two_pi) - pi;
      phase = phase_q + fminf(fmaxf(diff, -delta), delta);
      m.phase_from_ref = !(diff >= -delta && diff <= delta);  // torch's clamp passes inside, inclusive
    } else {
      phase = phase_q;
      m.phase_from_ref = true;
    }
  }
  m.amp = in_amp ? m.amp_q : m.amp_p;
  sincosf(phase, &m.s, &m.c);
  m.delta = make_float2(m.amp * m.c - fp.x, m.amp * m.s - fp.y);
  return m;
}

// The gradients of one band coefficient's Delta = F_out - F_p with respect to F_p and F_q, given
// g = dL/dDelta: through polar(A, phi), g_A = Re(g conj U) and g_phi = A Im(g conj U), each to the
// spectrum it was taken from (|F|' = F/|F|, angle(F)' = iF/|F|^2, zero where F = 0, as torch's),
// and -g to F_p. Zero outside both discs.
__device__ __forceinline__ void exchange_mix_gradient(float2 fp, float2 fq, float2 g, bool in_amp, bool in_phase,
                                                      int phase_project, float delta, float2& gp, float2& gq) {
  gp = gq = make_float2(0.f, 0.f);
  if (!(in_amp || in_phase)) return;
  const ExchangeMix m = exchange_mix(fp, fq, in_amp, in_phase, phase_project, delta);
  const float g_amp = g.x * m.c + g.y * m.s;
  const float g_phase = m.amp * (g.y * m.c - g.x * m.s);
  gp = make_float2(-g.x, -g.y);  // Delta = F_out - F_p
  // |F|' = F / |F|
  const float2 amp_src = in_amp ? fq : fp;
  const float amp_mag = in_amp ? m.amp_q : m.amp_p;
  if (amp_mag > 0.f) {
    const float2 add = make_float2(g_amp * amp_src.x / amp_mag, g_amp * amp_src.y / amp_mag);
    if (in_amp) gq = make_float2(gq.x + add.x, gq.y + add.y);
    else gp = make_float2(gp.x + add.x, gp.y + add.y);
  }
  // angle(F)' = i F / |F|^2
  const float2 phase_src = m.phase_from_ref ? fq : fp;
  const float phase_mag = m.phase_from_ref ? m.amp_q : m.amp_p;
  if (phase_mag > 0.f) {
    const float scale = g_phase / (phase_mag * phase_mag);
    const float2 add = make_float2(-scale * phase_src.y, scale * phase_src.x);
    if (m.phase_from_ref) gq = make_float2(gq.x + add.x, gq.y + add.y);
    else gp = make_float2(gp.x + add.x, gp.y + add.y);
  }
}

// E[h][j] = sum_i X[i][j] e^{+i theta_i h}: the band's inverse column transform, [KH x KW] ->
// [H x KW], or [rows x KW] for the rows from h0 (row h0 + h at h); and E2 from X2 when kTwo.
// Stored paired for band_inverse_rows: S at column j, D at its mirror K - j. A thread takes both
// columns of a pair, so each twiddle it loads serves both. Every thread of the block must call it;
// it returns synchronised.
template <bool kTwo = false>
__device__ __forceinline__ void band_inverse_columns(const float2* X, float2* E, const float* cos_h,
                                                     const float* sin_h, int H, int KH, int KW, int h0 = 0,
                                                     int rows = -1, const float2* X2 = nullptr,
                                                     float2* E2 = nullptr) {
  if (rows < 0) rows = H;
  const int columns = paired_count(KW);
  for (int idx = threadIdx.x; idx < rows * columns; idx += blockDim.x) {
    const int h = idx / columns, j = idx - h * columns, mirror = KW - j;
    const bool paired = has_mirror(j, KW);
    float2 a = make_float2(0.f, 0.f), b = a, a2 = a, b2 = a;  // columns j and K - j, of X and X2
    for (int i = 0; i < KH; ++i) {
      const float c = cos_h[i * H + h0 + h], s = sin_h[i * H + h0 + h];
      a = twiddle_mac(a, X[i * KW + j], c, s);
      if (paired) b = twiddle_mac(b, X[i * KW + mirror], c, s);
      if constexpr (kTwo) {
        a2 = twiddle_mac(a2, X2[i * KW + j], c, s);
        if (paired) b2 = twiddle_mac(b2, X2[i * KW + mirror], c, s);
      }
    }
    E[h * KW + j] = paired ? make_float2(a.x + b.x, a.y + b.y) : a;
    if (paired) E[h * KW + mirror] = make_float2(a.x - b.x, a.y - b.y);
    if constexpr (kTwo) {
      E2[h * KW + j] = paired ? make_float2(a2.x + b2.x, a2.y + b2.y) : a2;
      if (paired) E2[h * KW + mirror] = make_float2(a2.x - b2.x, a2.y - b2.y);
    }
  }
  __syncthreads();
}

// MANIPURE_ALWAYS_COMPLEX_Y=1 makes the kernels take y complex on every plane, as before they took
// Re y alone where that suffices (real_part_of_y_suffices): bench/tune_cuda.py times it.
#ifndef MANIPURE_ALWAYS_COMPLEX_Y
#define MANIPURE_ALWAYS_COMPLEX_Y 0
#endif

// Whether y = p + ifft2(Delta) is real, so that Im y is rounding. Both band spectra are Hermitian
// (the images are real), and the mix keeps that symmetry, so Delta is Hermitian. The exception is
// a Nyquist frequency (n/2 of an even side), which is in the band only when the band is the whole
// axis (K == n). There "project" rotates opposite real coefficients by -delta at a frequency and
// at its mirror alike, as the reference does (docs/reference-differences.md), and "abs" keeps the
// imaginary part that this gives y.
__device__ __forceinline__ bool exchanged_image_is_real(int H, int W, int KH, int KW) {
  return !((H % 2 == 0 && KH == H) || (W % 2 == 0 && KW == W));
}

// Whether the kernels need Re y alone: "real" reconstruction reads nothing else, and "abs" reads
// Im y only where y is not real. Then the forward's inverse rows sum Re y alone, and in the
// backward g_y = dL/dy is real too ("real": g_v; "abs": g_v y / |y|), so y's inverse rows sum Re y
// alone and fft2_band(g_y) takes the row transforms of one real image, not two.
__device__ __forceinline__ bool real_part_of_y_suffices(int H, int W, int KH, int KW, int reconstruct_real) {
  if (MANIPURE_ALWAYS_COMPLEX_Y) return false;
  return reconstruct_real || exchanged_image_is_real(H, W, KH, KW);
}

// Pixel rows a thread of band_inverse_rows takes: each twiddle it loads serves this many pixels.
// bench/tune_cuda.py times other counts through MANIPURE_INVERSE_ROWS_PER_THREAD.
#ifndef MANIPURE_INVERSE_ROWS_PER_THREAD
#define MANIPURE_INVERSE_ROWS_PER_THREAD 4
#endif
constexpr int kInverseRowsPerThread = MANIPURE_INVERSE_ROWS_PER_THREAD;
static_assert(kInverseRowsPerThread >= 1, "band_inverse_rows takes at least one row per thread");

// The band's inverse row transform at every pixel: acc = sum_j E[h][j] e^{+i theta_j w} (and acc2
// from E2 when kTwo), from E as band_inverse_columns stores it (paired), handed to
// pixel(h, w, acc, acc2), unnormalised. kRealOnly sums acc.x alone (acc.y stays 0), in
// paired_mac's order of operations: half the multiply-adds, for a caller that needs only the real
// part. A thread takes kInverseRowsPerThread rows of one column and loads each twiddle once for all
// of them; a warp's lanes take consecutive columns, so the twiddle reads are coalesced and E's are
// broadcast. The thread that gets a pixel depends only on (H, W), so two calls give each pixel to
// the same thread. It neither starts nor ends with a barrier.
template <bool kTwo, bool kRealOnly = false, typename Pixel>
__device__ __forceinline__ void band_inverse_rows(const float2* E, const float2* E2, int H, int W, int KW,
                                                  const float* cos_w, const float* sin_w, Pixel pixel) {
  constexpr int kRows = kInverseRowsPerThread;
  const int groups = (H + kRows - 1) / kRows;
  for (int idx = threadIdx.x; idx < groups * W; idx += blockDim.x) {
    const int g = idx / W, w = idx - g * W, h0 = g * kRows;
    float2 acc[kRows], acc2[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = acc2[r] = make_float2(0.f, 0.f);
    const int columns = paired_count(KW);
    for (int j = 0; j < columns; ++j) {
      const float c = cos_w[j * W + w], s = sin_w[j * W + w];
      const int d = has_mirror(j, KW) ? KW - j : j;  // where D is: the mirror's slot, or S itself
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (h0 + r >= H) break;
        const float2* row = E + (h0 + r) * KW;
        if constexpr (kRealOnly) acc[r].x += row[j].x * c - row[d].y * s;
        else acc[r] = paired_mac(acc[r], row[j], row[d], c, s);
        if constexpr (kTwo) {
          const float2* row2 = E2 + (h0 + r) * KW;
          acc2[r] = paired_mac(acc2[r], row2[j], row2[d], c, s);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (h0 + r < H) pixel(h0 + r, w, acc[r], acc2[r]);
  }
}

// ---- thread-block clusters (exchange_update_cluster.cu, exchange_update_cluster_backward.cu) ------

// Blocks per plane: the cluster kernels' MANIPURE_CLUSTER_DIMS.
constexpr int kExchangeClusterBlocks = 8;

// The sum of the cluster's blocks' `share` arrays at idx, in rank order, so that every block gets
// the same sum bit for bit. Only after a cluster barrier that follows the shares' writes.
__device__ __forceinline__ float2 cluster_sum(float2* share, int idx) {
  float2 sum = make_float2(0.f, 0.f);
#pragma unroll
  for (int r = 0; r < kExchangeClusterBlocks; ++r) {
    const float2 v = cluster_shared(share, r)[idx];
    sum = make_float2(sum.x + v.x, sum.y + v.y);
  }
  return sum;
}

// ---- the backward's stages (exchange_update_backward.cu, exchange_update_cluster_backward.cu) ------
// Each takes the rows from h0 (all H by default): a thread-block cluster's blocks take a slab each.

__device__ __forceinline__ bool within(float v, float lo, float hi) { return v >= lo && v <= hi; }

// g_y at element el, from y's inverse sums (y_re, y_im, unnormalised: times inv_n = 1 / HW):
// y = p + ifft2_band(Delta), and g_y = dL/dy under the output clamp (abs: g_v y/|y|; real: g_v).
__device__ __forceinline__ float2 output_gradient_at(const float* grad, const float* x_t, const float* eps,
                                                     long long el, float y_re, float y_im, float inv_n,
                                                     const ExchangeCoefficients& k, int reconstruct_real) {
  const float re = to_pixels(predicted_x0(x_t, eps, el, k)) + y_re * inv_n, im = y_im * inv_n;
  const float value = reconstruct_real ? re : hypotf(re, im);
  const float g_value = within(value, 0.f, 255.f) ? grad[el] * (k.sqrt_abar_next * (2.0f / 255.0f)) : 0.f;
  if (reconstruct_real) return make_float2(g_value, 0.f);
  return value > 0.f ? make_float2(g_value * re / value, g_value * im / value) : make_float2(0.f, 0.f);
}

// The four gradients at element el, from g_p = dL/dp (Re g_y plus g_F_p's inverse) and g_q (g_F_q's
// inverse): the [0, 255] clamps (inclusive masks) and the x0 maps. g_eps_ref only with has_eps_ref.
__device__ __forceinline__ void pixel_gradients_at(long long el, float g_p, float g_q, const float* grad,
                                                   const float* x_t, const float* eps, const float* ref_t,
                                                   const float* eps_ref, float* g_x_t, float* g_eps, float* g_ref_t,
                                                   float* g_eps_ref, const ExchangeCoefficients& k,
                                                   int has_eps_ref) {
  const float x0 = predicted_x0(x_t, eps, el, k);
  const float g_x0 = within(x0 / 2.0f + 0.5f, 0.f, 1.f) ? g_p * 127.5f : 0.f;
  g_x_t[el] = g_x0 / k.sqrt_abar;
  g_eps[el] = k.c2 * grad[el] - g_x0 * (k.sqrt_one_minus_abar / k.sqrt_abar);
  const float xr = reference_x0(ref_t, eps_ref, el, has_eps_ref, k);
  const float g_ref0 = within(xr / 2.0f + 0.5f, 0.f, 1.f) ? g_q * 127.5f : 0.f;
  if (has_eps_ref) {
    g_ref_t[el] = g_ref0 / k.ref_sqrt_abar;
    g_eps_ref[el] = -g_ref0 * (k.ref_sqrt_one_minus_abar / k.ref_sqrt_abar);
  } else {
    g_ref_t[el] = g_ref0;
  }
}

// y = p + ifft2_band(Delta) on the rows, and g_y = dL/dy under the output clamp (abs: g_v y/|y|;
// real: g_v) written over g_eps (Re) and g_ref_t (Im), which the last stage overwrites. With
// real_y (real_part_of_y_suffices), the inverse rows sum Re y alone and g_y is real: g_ref_t is
// left alone. E takes the inverse column transform, [rows x KW]. Every thread of the block must
// call it; it returns synchronised.
__device__ __forceinline__ void exchange_output_gradient(
    const float2* Delta, float2* E, const float* grad, const float* x_t, const float* eps, float* g_eps,
    float* g_ref_t, long long base, const float* cos_h, const float* sin_h, const float* cos_w,
    const float* sin_w, int H, int W, int KH, int KW, const ExchangeCoefficients& k, int reconstruct_real,
    bool real_y, int h0 = 0, int rows = -1) {
  if (rows < 0) rows = H;
  band_inverse_columns(Delta, E, cos_h, sin_h, H, KH, KW, h0, rows);
  const float inv_n = 1.0f / (float)(H * W);
  const auto store_gradient = [&](int h, int w, float2 acc, float2) {
    const long long el = base + (long long)(h0 + h) * W + w;
    const float2 gy = output_gradient_at(grad, x_t, eps, el, acc.x, acc.y, inv_n, k, reconstruct_real);
    g_eps[el] = gy.x;
    if (!real_y) g_ref_t[el] = gy.y;
  };
  if (real_y)
    band_inverse_rows<false, true>(E, nullptr, rows, W, KW, cos_w, sin_w, store_gradient);
  else
    band_inverse_rows<false>(E, nullptr, rows, W, KW, cos_w, sin_w, store_gradient);
  __syncthreads();  // the next stage reads other threads' g_y
}

// G[i][j] = scale * sum_h B[h][j] e^{-i theta_i h} over the rows, with B [rows x KW] the row
// transforms of g_y = a + i b: sum_w (a + i b) e^{-i theta_j w} = (a_cos + b_sin) + i (b_cos - a_sin),
// or of a alone when real_y (b = 0: exchange_output_gradient did not write it). That is
// fft2_band(g_y) (the rows' share of it), which scale = 1 / HW makes g_Delta. Every thread of the
// block must call it; it returns synchronised.
__device__ __forceinline__ void band_gradient_spectrum(const float* g_eps, const float* g_ref_t, long long base,
                                                       const float* cos_h, const float* sin_h, const float* cos_w,
                                                       const float* sin_w, int H, int W, int KH, int KW, float2* B,
                                                       float2* G, float scale, bool real_y, int h0 = 0,
                                                       int rows = -1) {
  if (rows < 0) rows = H;
  const auto element = [&](int h, int w) { return base + (long long)(h0 + h) * W + w; };
  if (real_y) {
    band_row_transforms<1>(
        rows, W, KW, cos_w, sin_w, [&](int h, int w, float* pixels) { pixels[0] = g_eps[element(h, w)]; },
        [&](int h, int j, const float* sums) { B[h * KW + j] = make_float2(sums[0], -sums[1]); });
  } else {
    band_row_transforms<2>(
        rows, W, KW, cos_w, sin_w,
        [&](int h, int w, float* pixels) {
          pixels[0] = g_eps[element(h, w)];
          pixels[1] = g_ref_t[element(h, w)];
        },
        [&](int h, int j, const float* sums) {  // a's cos, sin; b's cos, sin
          B[h * KW + j] = make_float2(sums[0] + sums[3], sums[2] - sums[1]);
        });
  }
  __syncthreads();
  band_columns(B, G, cos_h, sin_h, H, KH, KW, scale, h0, rows);
}

// Back to pixels on the rows: Re(sum_k e^{+i theta n} g_F[k]) for g_F_p and g_F_q (inverse column
// transforms into A and B, [rows x KW], then the real parts of the inverse rows), plus Re(g_y) kept
// in g_eps by exchange_output_gradient's same thread; then the [0, 255] clamps (inclusive masks) and
// the x0 maps, into the four gradients (g_eps_ref only with has_eps_ref). Every thread of the block
// must call it; it neither starts nor ends with a barrier.
__device__ __forceinline__ void exchange_pixel_gradients(
    const float2* g_Fp, const float2* g_Fq, float2* A, float2* B, const float* grad, const float* x_t,
    const float* eps, const float* ref_t, const float* eps_ref, float* g_x_t, float* g_eps, float* g_ref_t,
    float* g_eps_ref, long long base, const float* cos_h, const float* sin_h, const float* cos_w,
    const float* sin_w, int H, int W, int KH, int KW, const ExchangeCoefficients& k, int has_eps_ref, int h0 = 0,
    int rows = -1) {
  if (rows < 0) rows = H;
  band_inverse_columns<true>(g_Fp, A, cos_h, sin_h, H, KH, KW, h0, rows, g_Fq, B);
  // Only the real parts are used: the compiler drops the imaginary ones.
  band_inverse_rows<true>(A, B, rows, W, KW, cos_w, sin_w, [&](int h, int w, float2 acc_p, float2 acc_q) {
    const long long el = base + (long long)(h0 + h) * W + w;
    const float g_p = g_eps[el] + acc_p.x;  // Re(g_y), kept by this same thread
    pixel_gradients_at(el, g_p, acc_q.x, grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, k,
                       has_eps_ref);
  });
}

}  // namespace manipure

#endif  // MANIPURE_EXCHANGE_STAGES_CUH
