// MANI re-noising (SPEC §1) of 256 x 256 planes (ImageNet's) in one launch: a thread-block cluster
// of eight blocks per (image, channel) plane holds the plane's whole half spectrum in their shared
// memory (sm_90 and later). It reads x (and given noise) once and writes the output once, where
// the four-launch path (mani_noise_large.cu around cuFFT) moves about four times the bytes: MANI
// needs three plane-wide results in sequence (the band means, the map's statistic, the output),
// and a plane's 264 KB half spectrum does not fit one block. The same semantics as
// mani_noise_large.cu, whose band, share and statistic conventions it follows; the stages are
// mani_cluster_stages.cuh's:
//
//   1. F = rfft2(x)   block r transforms rows 32r..32r+31 (two real rows per complex FFT), then
//                     gathers and transforms the half spectrum's columns 16r..16r+15
//   2. bands          the band sums of share |F| per block, then across the cluster (in rank
//                     order, so every block gets the same means), the weights, and
//                     G = w[band] F (or w[band])
//   3. Y = irfft2(G)  the columns' inverse FFTs, then block r's rows, two per complex FFT
//   4. inject         the statistic of |Y| over the plane (rms, max or none) across the cluster,
//                     then x_t = sqrt(abar) x + sqrt(1-abar) (|Y| / s) z, with the Philox
//                     counters of the other MANI kernels (plane * H * W + pixel)
#include "mani_cluster_stages.cuh"

using namespace manipure;

// The forward's dynamic shared memory for n_bands bands (cuda_ops.mani_cluster_shared_bytes):
// n_bands band sums, the statistic's slot and n_bands weights.
__host__ __device__ constexpr int mani_cluster_shared_bytes(int n_bands) { return cluster_shared_bytes(1, 2 * n_bands + 1); }

// One cluster of kClusterBlocks blocks per plane (grid: planes * kClusterBlocks). steps: [256]
// float2, steps[k1 * 16 + n1] = e^{-2 pi i n1 k1 / 256}; band and share: the half spectrum's
// ([256 * 129], as mani_noise_large.cu's).
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
  const ClusterPlane p = cluster_plane(smem_f2, 1, steps);
  float* scratch = p.floats();
  float* sums = scratch + 32;            // [n_bands + 1]: the band sums, the statistic
  float* weights = sums + n_bands + 1;  // [n_bands]
  cluster_unnormalised_map(p, x, band, share, n_bands, gamma, eps0, weight_kernel, scratch, sums, nullptr, weights,
                           nullptr);

  // Y is 1/n times the inverse, as irfft2 normalises.
  const float inv_n = 1.0f / (float)(kClusterSide * kClusterSide);
  auto map_at = [&](int lr, int col) { return fabsf(cluster_pixel(p, lr, col) * inv_n); };
  const float scale = cluster_map_scale(map_at, normalize, scratch, sums + n_bands);
  for (int e = threadIdx.x; e < kSlabRows * kClusterSide; e += blockDim.x) {
    const int lr = e >> 8, col = e & 255;
    inject_at(p.pixel_index(lr, col), normalised_map(map_at(lr, col), normalize, scale), x, noise, out, noise_out,
              rng_state, signal, noise_scale, has_noise, store_noise);
  }
  cluster_sync();  // no block returns while another may still read its shared memory
#endif
}
