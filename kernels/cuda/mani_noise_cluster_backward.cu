// The backward of MANI re-noising on 256 x 256 planes (mani_noise_cluster.cu) in one launch, on the
// same thread-block cluster of eight blocks per plane: the gradients of mani_noise_large_backward.cu
// (N = H W, g_map = sqrt(1 - abar) grad z), with the plane's spectra held in the cluster's shared
// memory instead of going through global memory between eight launches. The stages are
// mani_cluster_stages.cuh's, so the forward is recomputed exactly as the forward computed it:
//
//   1. F = rfft2(x), the band means and weights, G, Y = irfft2(G)   the forward, F kept aside
//   2. the map's statistic over the plane; g_z = sqrt(1 - abar) W grad; <g_map, |Y|> and the
//      count of tied maxima, across the cluster
//   3. g_G = rfft2(g_Y / N), g_Y the normalisation's gradient through |.| (the large-plane
//      backward's normalisation_gradient)
//   4. the band sums of share Re(g_G conj F) (or share Re g_G) across the cluster; then
//      g_F = w[band] g_G + mean_grad F / |F| (spectrum_gradient)
//   5. g_x = sqrt(abar) grad + N irfft2(g_F), the unnormalised inverse
//
// With detach_map the map gets no gradient: g_x = sqrt(abar) grad, after g_z.
#include "mani_cluster_stages.cuh"

using namespace manipure;

// The backward's dynamic shared memory for n_bands bands (cuda_ops.mani_cluster_backward_shared_bytes):
// a second slab (F), then n_bands band sums, n_bands gradient band sums, three statistic slots,
// and n_bands each of means, weights and mean gradients.
__host__ __device__ constexpr int mani_cluster_backward_shared_bytes(int n_bands) {
  return cluster_shared_bytes(2, 5 * n_bands + 3);
}

// One cluster of kClusterBlocks blocks per plane (grid: planes * kClusterBlocks); the arguments as
// mani_noise_cluster_kernel's. Writes g_noise with noise_grad.
extern "C" __global__ void MANIPURE_CLUSTER_DIMS(8) mani_noise_cluster_backward_kernel(
    const float* __restrict__ grad, const float* __restrict__ x, const float* __restrict__ noise,
    float* __restrict__ g_x, float* __restrict__ g_noise, const float2* __restrict__ steps,
    const int* __restrict__ band, const float* __restrict__ share, int n_bands, float gamma, float eps0,
    int weight_kernel, int normalize, float signal, float noise_scale, int detach_map, int noise_grad) {
  static_assert(kClusterBlocks == 8, "MANIPURE_CLUSTER_DIMS above is the cluster's block count");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; cuda_ops launches this kernel on such devices only
#else
  extern __shared__ float2 smem_f2[];
  const ClusterPlane p = cluster_plane(smem_f2, 2, steps);
  float2* spectrum = smem_f2 + kFftsAtOnce * kFftStride;  // the second slab: F's
  float* scratch = p.floats();
  float* sums = scratch + 32;                // [n_bands]
  float* grad_sums = sums + n_bands;         // [n_bands]
  float* slots = grad_sums + n_bands;        // [3]: the statistic, the dot product, the tied maxima
  float* means = slots + 3;                  // [n_bands]
  float* weights = means + n_bands;          // [n_bands]
  float* mean_grads = weights + n_bands;     // [n_bands]
  const int rank = p.rank;
  auto at = [&](int lr, int col) { return p.pixel_index(lr, col); };

  // 1. The forward, F kept in `spectrum`.
  cluster_unnormalised_map(p, x, band, share, n_bands, gamma, eps0, weight_kernel, scratch, sums, means, weights,
                           spectrum);

  // 2. The map's statistic, the noise's gradient, and the normalisation's plane-wide terms.
  const float inv_n = 1.0f / (float)(kClusterSide * kClusterSide);
  auto map_at = [&](int lr, int col) { return fabsf(cluster_pixel(p, lr, col) * inv_n); };
  const float scale = cluster_map_scale(map_at, normalize, scratch, slots);
  const bool live = scale > 0.f;
  float local_dot = 0.f, local_at_max = 0.f;
  for (int e = threadIdx.x; e < kSlabRows * kClusterSide; e += blockDim.x) {
    const int lr = e >> 8, col = e & 255;
    const long long el = at(lr, col);
    const float s = map_at(lr, col);
    if (noise_grad) g_noise[el] = noise_scale * normalised_map(s, normalize, scale) * grad[el];
    if (detach_map) g_x[el] = grad[el] * signal;
    local_dot += noise_scale * grad[el] * noise[el] * s;
    local_at_max += (normalize == 2 && s == scale) ? 1.f : 0.f;
  }
  if (detach_map) {
    cluster_sync();  // no block returns while another may still read its shared memory
    return;
  }
  const float block_dot = block_reduce(local_dot, scratch, false);
  const float block_at_max = block_reduce(local_at_max, scratch, false);
  if (threadIdx.x == 0) slots[1] = block_dot, slots[2] = block_at_max;
  cluster_sync();
  const float dot = cluster_total(slots + 1, false);
  const float n_max = fmaxf(cluster_total(slots + 2, false), 1.f);

  // 3. g_G = rfft2(g_Y / N). Each value of `work` is read for its two pixels and then replaced.
  cluster_rfft2(p, [&](int lr, int col) {
    const long long el = at(lr, col);
    const float g_map = noise_scale * grad[el] * noise[el];
    const float y = cluster_pixel(p, lr, col) * inv_n;
    return normalisation_gradient(y, g_map, normalize, live, scale, dot, n_max, inv_n) * inv_n;
  });

  // 4. The band means' gradients (the shares already divide by the band's size), then g_F.
  band_sums_of(
      [&](int idx) { return band[slab_row(idx) * kHalfColumns + slab_column(rank, idx)]; }, slab_size(rank),
      n_bands, scratch,
      [&](int idx) {
        const float2 g = slab_coefficient(p.work, rank, idx);
        const float s = share[slab_row(idx) * kHalfColumns + slab_column(rank, idx)];
        if (weight_kernel) return g.x * s;
        const float2 f = slab_coefficient(spectrum, rank, idx);
        return (g.x * f.x + g.y * f.y) * s;
      },
      [&](int b, float total) {
        if (threadIdx.x == 0) grad_sums[b] = total;
      });
  cluster_sync();  // every block's gradient band sums are in place
  for (int b = threadIdx.x; b < n_bands; b += blockDim.x)
    mean_grads[b] = band_weight_slope(means[b], weights[b], gamma) * cluster_total(grad_sums + b, false);
  __syncthreads();
  slab_map(p.work, spectrum, rank, [&](int kh, int column, float2 g, float2 f) {
    const int b = band[kh * kHalfColumns + column];
    return spectrum_gradient(f, g, mean_grads[b], weights[b], weight_kernel);
  });

  // 5. g_x = sqrt(abar) grad + the unnormalised inverse of g_F.
  cluster_irfft2(p);
  for (int e = threadIdx.x; e < kSlabRows * kClusterSide; e += blockDim.x) {
    const int lr = e >> 8, col = e & 255;
    const long long el = at(lr, col);
    g_x[el] = cluster_pixel(p, lr, col) + grad[el] * signal;
  }
  cluster_sync();  // no block returns while another may still read its shared memory
#endif
}
