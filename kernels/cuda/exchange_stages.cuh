// The stages exchange_update.cu and exchange_update_backward.cu share: the x0 predictions, both
// band spectra, the exchange of one band coefficient, and the band-only inverse column transform.
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

// Both pixel images' band spectra: row transforms G[h][j] = sum_w v[h][w] e^{-i theta_j w} into
// Gp, Gq [H x KW], then F[i][j] = sum_h G[h][j] e^{-i theta_i h} into Fp, Fq [KH x KW]. Every
// thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void band_spectra(
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, long long base,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w, int H, int W, int KH,
    int KW, const ExchangeCoefficients& k, int has_eps_ref, float2* Gp, float2* Gq, float2* Fp, float2* Fq) {
  for (int idx = threadIdx.x; idx < H * KW; idx += blockDim.x) {
    const int h = idx / KW, j = idx - h * KW;
    float2 gp = make_float2(0.f, 0.f), gq = make_float2(0.f, 0.f);
    for (int w = 0; w < W; ++w) {
      const long long e = base + (long long)h * W + w;
      const float p = to_pixels(predicted_x0(x_t, eps, e, k));
      const float q = to_pixels(reference_x0(ref_t, eps_ref, e, has_eps_ref, k));
      const float c = cos_w[j * W + w], s = sin_w[j * W + w];
      gp.x += p * c;
      gp.y -= p * s;
      gq.x += q * c;
      gq.y -= q * s;
    }
    Gp[idx] = gp;
    Gq[idx] = gq;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < KH * KW; idx += blockDim.x) {
    const int i = idx / KW, j = idx - i * KW;
    float2 fp = make_float2(0.f, 0.f), fq = make_float2(0.f, 0.f);
    for (int h = 0; h < H; ++h) {
      const float c = cos_h[i * H + h], s = sin_h[i * H + h];
      fp = twiddle_mac(fp, Gp[h * KW + j], c, -s);
      fq = twiddle_mac(fq, Gq[h * KW + j], c, -s);
    }
    Fp[idx] = fp;
    Fq[idx] = fq;
  }
  __syncthreads();
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

// E[h][j] = sum_i X[i][j] e^{+i theta_i h}: the band's inverse column transform, [KH x KW] ->
// [H x KW]. Every thread of the block must call it; it returns synchronised.
__device__ __forceinline__ void band_inverse_columns(const float2* X, float2* E, const float* cos_h,
                                                     const float* sin_h, int H, int KH, int KW) {
  for (int idx = threadIdx.x; idx < H * KW; idx += blockDim.x) {
    const int h = idx / KW, j = idx - h * KW;
    float2 acc = make_float2(0.f, 0.f);
    for (int i = 0; i < KH; ++i) acc = twiddle_mac(acc, X[i * KW + j], cos_h[i * H + h], sin_h[i * H + h]);
    E[idx] = acc;
  }
  __syncthreads();
}

}  // namespace manipure

#endif  // MANIPURE_EXCHANGE_STAGES_CUH
