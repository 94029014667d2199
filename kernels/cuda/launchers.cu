// Host launchers for the ahead-of-time library (see launchers.h). The kernel sources are included
// as they are, so the CMake build and the CuPy JIT compile byte-identical device code.
#include "launchers.h"

#include "exchange_update.cu"
#include "exchange_update_backward.cu"
#include "exchange_update_cluster.cu"
#include "exchange_update_cluster_backward.cu"
#include "mani_noise.cu"
#include "mani_noise_backward.cu"
#include "mani_noise_cluster.cu"
#include "mani_noise_cluster_backward.cu"
#include "mani_noise_large.cu"
#include "mani_noise_large_backward.cu"

namespace manipure {

static_assert(kExchangeMaxWidth == kMaxRowWidth, "launchers.h and exchange_stages.cuh disagree on the row width");
static_assert(kManiClusterBlocks == kExchangeClusterBlocks, "the exchange's and MANI's clusters differ");
static_assert(kManiClusterSide == kClusterSide && kManiClusterBlocks == kClusterBlocks,
              "launchers.h and mani_noise_cluster.cu disagree on the cluster's plane");

namespace {
constexpr int kThreads = 256;  // the block size the kernels are written for (cuda_ops.THREADS)

template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, int shared_bytes) {
  // Above 48 KB a kernel must opt in; setting the attribute is cheap and allowed during capture.
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
}
}  // namespace

cudaError_t launch_exchange_update(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, const float* noise,
    float* out, const long long* rng_state,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const float* amp_mask, const float* phase_mask,
    int H, int W, int KH, int KW, const float coefficients[8],
    int has_eps_ref, int has_noise, int phase_project, int reconstruct_real, bool on_clusters) {
  const float* k = coefficients;
  if (on_clusters) {
    cudaError_t status = allow_shared(exchange_update_cluster_kernel, shared_bytes);
    if (status != cudaSuccess) return status;
    // The cluster's shape is the kernel's (__cluster_dims__): a plain launch of whole clusters.
    exchange_update_cluster_kernel<<<planes * kExchangeClusterBlocks, kThreads, shared_bytes, stream>>>(
        x_t, eps, ref_t, eps_ref, noise, out, rng_state, cos_h, sin_h, cos_w, sin_w, amp_mask,
        phase_mask, H, W, KH, KW, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], has_eps_ref,
        has_noise, phase_project, reconstruct_real);
    return cudaGetLastError();
  }
  cudaError_t status = allow_shared(exchange_update_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  exchange_update_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      x_t, eps, ref_t, eps_ref, noise, out, rng_state, cos_h, sin_h, cos_w, sin_w, amp_mask,
      phase_mask, H, W, KH, KW, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], has_eps_ref,
      has_noise, phase_project, reconstruct_real);
  return cudaGetLastError();
}

cudaError_t launch_exchange_update_backward(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* x_t, const float* eps, const float* ref_t, const float* eps_ref,
    float* g_x_t, float* g_eps, float* g_ref_t, float* g_eps_ref,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const float* amp_mask, const float* phase_mask,
    int H, int W, int KH, int KW, const float coefficients[8],
    int has_eps_ref, int phase_project, int reconstruct_real, bool on_clusters) {
  const float* k = coefficients;
  if (on_clusters) {
    cudaError_t status = allow_shared(exchange_update_cluster_backward_kernel, shared_bytes);
    if (status != cudaSuccess) return status;
    exchange_update_cluster_backward_kernel<<<planes * kExchangeClusterBlocks, kThreads, shared_bytes, stream>>>(
        grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, cos_h, sin_h, cos_w, sin_w,
        amp_mask, phase_mask, H, W, KH, KW, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7],
        has_eps_ref, phase_project, reconstruct_real);
    return cudaGetLastError();
  }
  cudaError_t status = allow_shared(exchange_update_backward_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  exchange_update_backward_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      grad, x_t, eps, ref_t, eps_ref, g_x_t, g_eps, g_ref_t, g_eps_ref, cos_h, sin_h, cos_w, sin_w,
      amp_mask, phase_mask, H, W, KH, KW, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7],
      has_eps_ref, phase_project, reconstruct_real);
  return cudaGetLastError();
}

cudaError_t launch_mani_noise(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x, const float* noise, float* out, float* noise_out, const long long* rng_state,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const int* band_map, const float* band_counts,
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int has_noise, int store_noise) {
  cudaError_t status = allow_shared(mani_noise_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  mani_noise_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      x, noise, out, noise_out, rng_state, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, H, W,
      n_bands, gamma, eps0, weight_kernel, normalize, signal, noise_scale, has_noise, store_noise);
  return cudaGetLastError();
}

cudaError_t launch_mani_noise_backward(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* x, const float* noise, float* g_x, float* g_noise,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const int* band_map, const float* band_counts,
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int detach_map, int noise_grad) {
  cudaError_t status = allow_shared(mani_noise_backward_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  mani_noise_backward_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      grad, x, noise, g_x, g_noise, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, H, W, n_bands,
      gamma, eps0, weight_kernel, normalize, signal, noise_scale, detach_map, noise_grad);
  return cudaGetLastError();
}

cudaError_t launch_mani_band_weights(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* spectrum, float* weighted, float* stats, const int* band, const float* share,
    int n_coefficients, int n_bands, float gamma, float eps0, int weight_kernel, int store_stats) {
  mani_band_weights_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      reinterpret_cast<const float2*>(spectrum), reinterpret_cast<float2*>(weighted), stats, band, share,
      n_coefficients, n_bands, gamma, eps0, weight_kernel, store_stats);
  return cudaGetLastError();
}

cudaError_t launch_mani_inject(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x, const float* shaped, const float* noise, float* out, float* noise_out,
    const long long* rng_state, int n, int normalize, float signal, float noise_scale,
    int has_noise, int store_noise) {
  mani_inject_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      x, shaped, noise, out, noise_out, rng_state, n, normalize, signal, noise_scale, has_noise,
      store_noise);
  return cudaGetLastError();
}

cudaError_t launch_mani_noise_cluster(
    int planes, cudaStream_t stream,
    const float* x, const float* noise, float* out, float* noise_out, const long long* rng_state,
    const float* steps, const int* band, const float* share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int has_noise, int store_noise) {
  const int shared_bytes = mani_cluster_shared_bytes(n_bands);
  cudaError_t status = allow_shared(mani_noise_cluster_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  // The cluster's shape is the kernel's (__cluster_dims__): a plain launch of whole clusters.
  mani_noise_cluster_kernel<<<planes * kClusterBlocks, kThreads, shared_bytes, stream>>>(
      x, noise, out, noise_out, rng_state, reinterpret_cast<const float2*>(steps), band, share, n_bands,
      gamma, eps0, weight_kernel, normalize, signal, noise_scale, has_noise, store_noise);
  return cudaGetLastError();
}

cudaError_t launch_mani_noise_cluster_backward(
    int planes, cudaStream_t stream,
    const float* grad, const float* x, const float* noise, float* g_x, float* g_noise,
    const float* steps, const int* band, const float* share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int detach_map, int noise_grad) {
  const int shared_bytes = mani_cluster_backward_shared_bytes(n_bands);
  cudaError_t status = allow_shared(mani_noise_cluster_backward_kernel, shared_bytes);
  if (status != cudaSuccess) return status;
  mani_noise_cluster_backward_kernel<<<planes * kClusterBlocks, kThreads, shared_bytes, stream>>>(
      grad, x, noise, g_x, g_noise, reinterpret_cast<const float2*>(steps), band, share, n_bands, gamma, eps0,
      weight_kernel, normalize, signal, noise_scale, detach_map, noise_grad);
  return cudaGetLastError();
}

cudaError_t launch_mani_map_gradient(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* noise, const float* shaped, float* g_shaped, float* g_noise,
    int n, int normalize, float noise_scale, int detach_map, int noise_grad) {
  mani_map_gradient_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      grad, noise, shaped, g_shaped, g_noise, n, normalize, noise_scale, detach_map, noise_grad);
  return cudaGetLastError();
}

cudaError_t launch_mani_spectrum_gradient(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* g_spectrum, const float* spectrum, float* g_out, const float* stats, const int* band,
    const float* share, int n_coefficients, int n_bands, float gamma, int weight_kernel) {
  mani_spectrum_gradient_kernel<<<planes, kThreads, shared_bytes, stream>>>(
      reinterpret_cast<const float2*>(g_spectrum), reinterpret_cast<const float2*>(spectrum),
      reinterpret_cast<float2*>(g_out), stats, band, share, n_coefficients, n_bands, gamma, weight_kernel);
  return cudaGetLastError();
}

}  // namespace manipure
