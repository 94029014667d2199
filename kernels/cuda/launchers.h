// Host launchers for the CUDA kernels, for the ahead-of-time library built by the root
// CMakeLists.txt (kernels/cuda/torch_library.cpp calls them). Plain CUDA runtime types only, so
// this unit compiles without torch's headers. The CuPy JIT (manipure_fast/ops/cuda_ops.py) launches
// the same kernels itself and does not use this file.
#pragma once

#include <cuda_runtime.h>

namespace manipure {

// The widest plane the exchange kernels take (exchange_stages.cuh kMaxRowWidth, checked there;
// cuda_ops.EXCHANGE_MAX_WIDTH). torch_library.cpp refuses wider planes.
constexpr int kExchangeMaxWidth = 256;

// One thread block per (image, channel) plane (on_clusters: a thread-block cluster of
// kManiClusterBlocks blocks per plane, exchange_update_cluster.cu, sm_90 and later, H a multiple
// of 8); the launchers raise the kernel's dynamic shared-memory limit to `shared_bytes` first and
// return cudaGetLastError() after the launch.
cudaError_t launch_exchange_update(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x_t, const float* eps, const float* ref_t, const float* eps_ref, const float* noise,
    float* out, const long long* rng_state,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const float* amp_mask, const float* phase_mask,
    int H, int W, int KH, int KW, const float coefficients[8],
    int has_eps_ref, int has_noise, int phase_project, int reconstruct_real, bool on_clusters = false);

// The gradients for (x_t, eps, ref_t, eps_ref); g_eps_ref is not written without eps_ref.
// on_clusters: exchange_update_cluster_backward.cu, as launch_exchange_update's.
cudaError_t launch_exchange_update_backward(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* x_t, const float* eps, const float* ref_t, const float* eps_ref,
    float* g_x_t, float* g_eps, float* g_ref_t, float* g_eps_ref,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const float* amp_mask, const float* phase_mask,
    int H, int W, int KH, int KW, const float coefficients[8],
    int has_eps_ref, int phase_project, int reconstruct_real, bool on_clusters = false);

cudaError_t launch_mani_noise(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x, const float* noise, float* out, float* noise_out, const long long* rng_state,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const int* band_map, const float* band_counts,
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int has_noise, int store_noise);

// The gradients for x and (when noise_grad) the noise; g_noise is not written otherwise.
cudaError_t launch_mani_noise_backward(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* x, const float* noise, float* g_x, float* g_noise,
    const float* cos_h, const float* sin_h, const float* cos_w, const float* sin_w,
    const int* band_map, const float* band_counts,
    int H, int W, int n_bands, float gamma, float eps0, int weight_kernel, int normalize,
    float signal, float noise_scale, int detach_map, int noise_grad);

// The large-plane MANI kernels (mani_noise_large.cu), between and after cuFFT's transforms.
// shared_bytes: (32 + n_bands) floats for the band weights, 32 floats for the injection. stats
// ([planes, 2, n_bands]) is written only with store_stats.
cudaError_t launch_mani_band_weights(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* spectrum, float* weighted, float* stats, const int* band, const float* share,
    int n_coefficients, int n_bands, float gamma, float eps0, int weight_kernel, int store_stats);

cudaError_t launch_mani_inject(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* x, const float* shaped, const float* noise, float* out, float* noise_out,
    const long long* rng_state, int n, int normalize, float signal, float noise_scale,
    int has_noise, int store_noise);

// 256x256 planes in one launch (mani_noise_cluster.cu): a thread-block cluster of
// kManiClusterBlocks blocks per plane, on sm_90 and later only. steps: [256] float2 FFT twiddles
// (dft_tables.fft_steps); band and share as for launch_mani_band_weights, over 256 x 129.
constexpr int kManiClusterSide = 256;
constexpr int kManiClusterBlocks = 8;

cudaError_t launch_mani_noise_cluster(
    int planes, cudaStream_t stream,
    const float* x, const float* noise, float* out, float* noise_out, const long long* rng_state,
    const float* steps, const int* band, const float* share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int has_noise, int store_noise);

// Its backward in one launch (mani_noise_cluster_backward.cu). g_noise is written only with
// noise_grad.
cudaError_t launch_mani_noise_cluster_backward(
    int planes, cudaStream_t stream,
    const float* grad, const float* x, const float* noise, float* g_x, float* g_noise,
    const float* steps, const int* band, const float* share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int detach_map, int noise_grad);

// The large-plane backward's two kernels (mani_noise_large_backward.cu). shared_bytes: 32 floats for the map
// gradient, (32 + 2 n_bands) floats for the spectrum gradient. g_noise is written only with
// noise_grad, g_shaped only without detach_map.
cudaError_t launch_mani_map_gradient(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* grad, const float* noise, const float* shaped, float* g_shaped, float* g_noise,
    int n, int normalize, float noise_scale, int detach_map, int noise_grad);

cudaError_t launch_mani_spectrum_gradient(
    int planes, int shared_bytes, cudaStream_t stream,
    const float* g_spectrum, const float* spectrum, float* g_out, const float* stats, const int* band,
    const float* share, int n_coefficients, int n_bands, float gamma, int weight_kernel);

}  // namespace manipure
