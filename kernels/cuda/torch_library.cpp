// The ahead-of-time library's torch ops (built by the root CMakeLists.txt when
// MANIPURE_BUILD_CUDA=1; loaded by manipure_fast/ops/cuda_ops.py as manipure_fast._cuda_ops).
//
//   manipure_aot::exchange_update(...)          -> Tensor          x_next  [B, C, H, W]
//   manipure_aot::exchange_update_cluster(...)  -> Tensor          the same, one cluster per plane (sm_90)
//   manipure_aot::exchange_update_backward(...) -> 4 x Tensor      grads for x_t, eps, ref_t, eps_ref
//                                                                  (the last empty without eps_ref)
//   manipure_aot::exchange_update_cluster_backward(...) -> 4 x Tensor the same, one cluster per plane (sm_90)
//   manipure_aot::mani_noise(...)               -> (Tensor, Tensor) x_t, and the noise drawn (or empty)
//   manipure_aot::mani_noise_backward(...)      -> (Tensor, Tensor) grads for x and the noise (or empty)
//   manipure_aot::mani_band_weights(...)        -> (Tensor, Tensor) G = w[band] F on rfft2's half spectra,
//                                                                  and the band means and weights (or empty)
//   manipure_aot::mani_inject(...)              -> (Tensor, Tensor) x_t from irfft2(G), and the noise drawn
//                                                                  (or empty): the large-plane MANI path
//   manipure_aot::mani_noise_cluster(...)       -> (Tensor, Tensor) x_t and the noise drawn (or empty) for
//                                                                  256x256 planes, one cluster launch (sm_90)
//   manipure_aot::mani_noise_cluster_backward(...) -> (Tensor, Tensor) its backward: grads for x and the
//                                                                  noise (or empty), one cluster launch
//   manipure_aot::mani_map_gradient(...)        -> (Tensor, Tensor) its backward: g_Y / N (or empty) and the
//                                                                  noise's gradient (or empty)
//   manipure_aot::mani_spectrum_gradient(...)   -> Tensor          g_F from g_G = rfft2(g_Y / N)
//
// These are the launch layer: they take the cached DFT tables and masks that cuda_ops builds (one
// Python source for them, shared with the CuPy JIT) and launch the kernels of kernels/cuda on
// torch's current stream. Autograd and the public argument checks live above, in cuda_ops and
// manipure_fast.ops; the checks here only keep a bad call from reaching a kernel. A Meta
// implementation lets fake tensors, torch.compile and opcheck trace the ops without a launch.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "launchers.h"

namespace {

constexpr int64_t kMaxSharedBytes = 200 * 1024;  // cuda_ops.MAX_SHARED_BYTES

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_image(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_tensor(t, name, at::kFloat, like);
  TORCH_CHECK(t.sizes() == like.sizes(), name, " has shape ", t.sizes(), ", expected ", like.sizes());
}

void check_table(const at::Tensor& t, const char* name, int64_t rows, int64_t cols, const at::Tensor& like) {
  check_tensor(t, name, at::kFloat, like);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must be [", rows, ", ",
              cols, "], got ", t.sizes());
}

void check_launch(int64_t planes, int64_t shared_bytes, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "manipure_aot ops run on CUDA tensors, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "expected a [B, C, H, W] tensor, got ", x.sizes());
  TORCH_CHECK(planes > 0 && planes <= INT32_MAX, "the batch has ", planes, " planes; need 1 to 2^31-1");
  TORCH_CHECK(shared_bytes > 0 && shared_bytes <= kMaxSharedBytes, "shared_bytes ", shared_bytes,
              " is outside (0, ", kMaxSharedBytes, "]");
}

const long long* rng_pointer(const std::optional<at::Tensor>& rng_state, const at::Tensor& like) {
  if (!rng_state.has_value()) return nullptr;
  check_tensor(*rng_state, "rng_state", at::kLong, like);
  TORCH_CHECK(rng_state->numel() == 2, "rng_state must hold [seed, offset], got ", rng_state->sizes());
  return reinterpret_cast<const long long*>(rng_state->data_ptr<int64_t>());
}

// An op's noise, given or drawn in the kernel from rng_state: checks both, and that one is there;
// returns the generator state (null with given noise alone).
const long long* noise_or_rng(const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& rng_state,
                              const at::Tensor& like, const char* op) {
  if (noise.has_value()) check_image(*noise, "noise", like);
  const long long* rng = rng_pointer(rng_state, like);
  TORCH_CHECK(noise.has_value() || rng != nullptr, op, " needs noise or rng_state");
  return rng;
}

// The MANI ops' noise arguments: the kernel reads given noise, or draws it and stores what it drew
// in `drawn`, which the op returns (empty when the noise was given).
struct InjectedNoise {
  at::Tensor drawn;
  const float* given;     // the given noise (x, unread, when drawn)
  float* store;           // where the kernel stores its draws (out, unwritten, when given)
  const long long* rng;
  bool has_noise;
};

InjectedNoise injected_noise(const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& rng_state,
                             const at::Tensor& x, const at::Tensor& out, const char* op) {
  const long long* rng = noise_or_rng(noise, rng_state, x, op);
  at::Tensor drawn = noise.has_value() ? at::empty({0}, x.options()) : at::empty_like(x);
  const float* given = noise.has_value() ? noise->data_ptr<float>() : x.data_ptr<float>();
  float* store = noise.has_value() ? out.data_ptr<float>() : drawn.data_ptr<float>();
  return {drawn, given, store, rng, noise.has_value()};
}

// torch's current stream on x's device. The device-generic c10 interface (rather than
// c10/cuda's CUDAStream) keeps this file buildable against a CPU torch, whose headers lack the
// CUDA-specific configuration; at run time it reaches the same CUDA stream registry.
cudaStream_t current_stream(const at::Tensor& x) {
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(cuda.getStream(x.device()).native_handle());
}

void check_status(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "manipure_aot::", op, " launch failed: ", cudaGetErrorString(status));
}

// The exchange ops' shared checks; returns (KH, KW).
std::pair<int64_t, int64_t> check_exchange(
    const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& ref_t,
    const std::optional<at::Tensor>& eps_ref, const at::Tensor& cos_h, const at::Tensor& sin_h,
    const at::Tensor& cos_w, const at::Tensor& sin_w, const at::Tensor& amp_mask,
    const at::Tensor& phase_mask, at::ArrayRef<double> coefficients, int64_t shared_bytes) {
  const int64_t planes = x_t.dim() == 4 ? x_t.size(0) * x_t.size(1) : 0;
  check_launch(planes, shared_bytes, x_t);
  const int64_t H = x_t.size(2), W = x_t.size(3), KH = cos_h.size(0), KW = cos_w.size(0);
  TORCH_CHECK(W <= manipure::kExchangeMaxWidth, "exchange_update takes planes up to ",
              manipure::kExchangeMaxWidth, " pixels wide, got ", H, "x", W);
  check_image(x_t, "x_t", x_t);
  check_image(eps, "eps", x_t);
  check_image(ref_t, "ref_t", x_t);
  if (eps_ref.has_value()) check_image(*eps_ref, "eps_ref", x_t);
  check_table(cos_h, "cos_h", KH, H, x_t);
  check_table(sin_h, "sin_h", KH, H, x_t);
  check_table(cos_w, "cos_w", KW, W, x_t);
  check_table(sin_w, "sin_w", KW, W, x_t);
  check_table(amp_mask, "amp_mask", KH, KW, x_t);
  check_table(phase_mask, "phase_mask", KH, KW, x_t);
  TORCH_CHECK(coefficients.size() == 8, "coefficients must hold 8 values (cuda_ops.COEFFICIENTS), got ",
              coefficients.size());
  return {KH, KW};
}

void to_floats(at::ArrayRef<double> coefficients, float* k) {
  for (int i = 0; i < 8; ++i) k[i] = static_cast<float>(coefficients[i]);
}

// The cluster kernels' planes: heights the cluster's blocks split evenly, and a grid of whole clusters
// that fits an int.
void check_exchange_clusters(const at::Tensor& x_t, const char* op) {
  constexpr int64_t blocks = manipure::kManiClusterBlocks;
  TORCH_CHECK(x_t.size(2) % blocks == 0, op, " takes planes whose height is a multiple of ", blocks, ", got ",
              x_t.size(2), "x", x_t.size(3));
  TORCH_CHECK(x_t.size(0) * x_t.size(1) <= INT32_MAX / blocks, "the batch has ", x_t.size(0) * x_t.size(1),
              " planes; need up to ", INT32_MAX / blocks);
}

// exchange_update, and exchange_update_cluster (kOnClusters): one block, or one cluster, per plane.
template <bool kOnClusters>
at::Tensor exchange_update_cuda(
    const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& ref_t,
    const std::optional<at::Tensor>& eps_ref, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& rng_state, const at::Tensor& cos_h, const at::Tensor& sin_h,
    const at::Tensor& cos_w, const at::Tensor& sin_w, const at::Tensor& amp_mask,
    const at::Tensor& phase_mask, at::ArrayRef<double> coefficients, bool phase_project,
    bool reconstruct_real, int64_t shared_bytes) {
  const bool on_clusters = kOnClusters;
  const char* op = on_clusters ? "exchange_update_cluster" : "exchange_update";
  const auto [KH, KW] = check_exchange(x_t, eps, ref_t, eps_ref, cos_h, sin_h, cos_w, sin_w, amp_mask,
                                       phase_mask, coefficients, shared_bytes);
  if (on_clusters) check_exchange_clusters(x_t, op);
  const long long* rng = noise_or_rng(noise, rng_state, x_t, op);

  float k[8];
  to_floats(coefficients, k);
  at::Tensor out = at::empty_like(x_t);
  const float* x = x_t.data_ptr<float>();
  const c10::DeviceGuard guard(x_t.device());
  check_status(
      manipure::launch_exchange_update(
          static_cast<int>(x_t.size(0) * x_t.size(1)), static_cast<int>(shared_bytes), current_stream(x_t), x,
          eps.data_ptr<float>(), ref_t.data_ptr<float>(), eps_ref.has_value() ? eps_ref->data_ptr<float>() : x,
          noise.has_value() ? noise->data_ptr<float>() : x, out.data_ptr<float>(), rng,
          cos_h.data_ptr<float>(), sin_h.data_ptr<float>(), cos_w.data_ptr<float>(),
          sin_w.data_ptr<float>(), amp_mask.data_ptr<float>(), phase_mask.data_ptr<float>(),
          static_cast<int>(x_t.size(2)), static_cast<int>(x_t.size(3)), static_cast<int>(KH),
          static_cast<int>(KW), k, eps_ref.has_value(), noise.has_value(), phase_project, reconstruct_real,
          on_clusters),
      op);
  return out;
}

// exchange_update_backward, and exchange_update_cluster_backward (kOnClusters).
template <bool kOnClusters>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> exchange_update_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& ref_t,
    const std::optional<at::Tensor>& eps_ref, const at::Tensor& cos_h, const at::Tensor& sin_h,
    const at::Tensor& cos_w, const at::Tensor& sin_w, const at::Tensor& amp_mask,
    const at::Tensor& phase_mask, at::ArrayRef<double> coefficients, bool phase_project,
    bool reconstruct_real, int64_t shared_bytes) {
  const bool on_clusters = kOnClusters;
  const char* op = on_clusters ? "exchange_update_cluster_backward" : "exchange_update_backward";
  const auto [KH, KW] = check_exchange(x_t, eps, ref_t, eps_ref, cos_h, sin_h, cos_w, sin_w, amp_mask,
                                       phase_mask, coefficients, shared_bytes);
  if (on_clusters) check_exchange_clusters(x_t, op);
  check_image(grad, "grad", x_t);
  float k[8];
  to_floats(coefficients, k);
  at::Tensor g_x_t = at::empty_like(x_t), g_eps = at::empty_like(x_t), g_ref_t = at::empty_like(x_t);
  at::Tensor g_eps_ref = eps_ref.has_value() ? at::empty_like(x_t) : at::empty({0}, x_t.options());
  const float* x = x_t.data_ptr<float>();
  const c10::DeviceGuard guard(x_t.device());
  check_status(
      manipure::launch_exchange_update_backward(
          static_cast<int>(x_t.size(0) * x_t.size(1)), static_cast<int>(shared_bytes), current_stream(x_t),
          grad.data_ptr<float>(), x, eps.data_ptr<float>(), ref_t.data_ptr<float>(),
          eps_ref.has_value() ? eps_ref->data_ptr<float>() : x, g_x_t.data_ptr<float>(),
          g_eps.data_ptr<float>(), g_ref_t.data_ptr<float>(),
          eps_ref.has_value() ? g_eps_ref.data_ptr<float>() : g_ref_t.data_ptr<float>(),
          cos_h.data_ptr<float>(), sin_h.data_ptr<float>(), cos_w.data_ptr<float>(),
          sin_w.data_ptr<float>(), amp_mask.data_ptr<float>(), phase_mask.data_ptr<float>(),
          static_cast<int>(x_t.size(2)), static_cast<int>(x_t.size(3)), static_cast<int>(KH),
          static_cast<int>(KW), k, eps_ref.has_value(), phase_project, reconstruct_real, on_clusters),
      op);
  return {g_x_t, g_eps, g_ref_t, g_eps_ref};
}

// The MANI ops' shared checks.
void check_mani(const at::Tensor& x, const at::Tensor& cos_h, const at::Tensor& sin_h, const at::Tensor& cos_w,
                const at::Tensor& sin_w, const at::Tensor& band_map, const at::Tensor& band_counts,
                int64_t normalize, int64_t shared_bytes) {
  const int64_t planes = x.dim() == 4 ? x.size(0) * x.size(1) : 0;
  check_launch(planes, shared_bytes, x);
  const int64_t H = x.size(2), W = x.size(3);
  check_image(x, "x", x);
  check_table(cos_h, "cos_h", H, H, x);
  check_table(sin_h, "sin_h", H, H, x);
  check_table(cos_w, "cos_w", W, W, x);
  check_table(sin_w, "sin_w", W, W, x);
  check_tensor(band_map, "band_map", at::kInt, x);
  TORCH_CHECK(band_map.numel() == H * W, "band_map must hold H*W = ", H * W, " labels, got ", band_map.numel());
  check_tensor(band_counts, "band_counts", at::kFloat, x);
  TORCH_CHECK(band_counts.numel() >= 1, "band_counts is empty");
  TORCH_CHECK(normalize >= 0 && normalize <= 2, "normalize must be 0 (none), 1 (rms) or 2 (max), got ", normalize);
}

std::tuple<at::Tensor, at::Tensor> mani_noise_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& rng_state, const at::Tensor& cos_h, const at::Tensor& sin_h,
    const at::Tensor& cos_w, const at::Tensor& sin_w, const at::Tensor& band_map,
    const at::Tensor& band_counts, double gamma, double eps0, bool weight_kernel, int64_t normalize,
    double signal, double noise_scale, int64_t shared_bytes) {
  check_mani(x, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, normalize, shared_bytes);
  at::Tensor out = at::empty_like(x);
  const InjectedNoise z = injected_noise(noise, rng_state, x, out, "mani_noise");
  const c10::DeviceGuard guard(x.device());
  check_status(
      manipure::launch_mani_noise(
          static_cast<int>(x.size(0) * x.size(1)), static_cast<int>(shared_bytes), current_stream(x),
          x.data_ptr<float>(), z.given, out.data_ptr<float>(), z.store, z.rng,
          cos_h.data_ptr<float>(), sin_h.data_ptr<float>(), cos_w.data_ptr<float>(),
          sin_w.data_ptr<float>(), band_map.data_ptr<int>(), band_counts.data_ptr<float>(),
          static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), static_cast<int>(band_counts.numel()),
          static_cast<float>(gamma), static_cast<float>(eps0), weight_kernel, static_cast<int>(normalize),
          static_cast<float>(signal), static_cast<float>(noise_scale), z.has_noise, !z.has_noise),
      "mani_noise");
  return {out, z.drawn};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& noise, const at::Tensor& cos_h,
    const at::Tensor& sin_h, const at::Tensor& cos_w, const at::Tensor& sin_w, const at::Tensor& band_map,
    const at::Tensor& band_counts, double gamma, double eps0, bool weight_kernel, int64_t normalize,
    double signal, double noise_scale, bool detach_map, bool noise_grad, int64_t shared_bytes) {
  check_mani(x, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, normalize, shared_bytes);
  check_image(grad, "grad", x);
  check_image(noise, "noise", x);
  at::Tensor g_x = at::empty_like(x);
  at::Tensor g_noise = noise_grad ? at::empty_like(x) : at::empty({0}, x.options());
  const c10::DeviceGuard guard(x.device());
  check_status(
      manipure::launch_mani_noise_backward(
          static_cast<int>(x.size(0) * x.size(1)), static_cast<int>(shared_bytes), current_stream(x),
          grad.data_ptr<float>(), x.data_ptr<float>(), noise.data_ptr<float>(), g_x.data_ptr<float>(),
          noise_grad ? g_noise.data_ptr<float>() : g_x.data_ptr<float>(), cos_h.data_ptr<float>(),
          sin_h.data_ptr<float>(), cos_w.data_ptr<float>(), sin_w.data_ptr<float>(), band_map.data_ptr<int>(),
          band_counts.data_ptr<float>(), static_cast<int>(x.size(2)), static_cast<int>(x.size(3)),
          static_cast<int>(band_counts.numel()), static_cast<float>(gamma), static_cast<float>(eps0),
          weight_kernel, static_cast<int>(normalize), static_cast<float>(signal),
          static_cast<float>(noise_scale), detach_map, noise_grad),
      "mani_noise_backward");
  return {g_x, g_noise};
}

// The large-plane MANI path's launches (mani_noise_large.cu, mani_noise_large_backward.cu); cuda_ops
// runs cuFFT around them.

// A real view of [B, C, H, W/2 + 1] complex half spectra; returns (planes, coefficients per plane).
std::pair<int64_t, int64_t> check_half_spectra(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "manipure_aot ops run on CUDA tensors, got ", t.device());
  check_tensor(t, name, at::kFloat, like);
  TORCH_CHECK(t.dim() == 5 && t.size(4) == 2, name,
              " must be a real view of [B, C, H, W/2 + 1] complex half spectra, got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " has shape ", t.sizes(), ", expected ", like.sizes());
  const int64_t planes = t.size(0) * t.size(1);
  TORCH_CHECK(planes > 0 && planes <= INT32_MAX, "the batch has ", planes, " planes; need 1 to 2^31-1");
  return {planes, t.size(2) * t.size(3)};
}

void check_bands(const at::Tensor& band, const at::Tensor& share, int64_t n, int64_t n_bands,
                 const at::Tensor& like) {
  check_tensor(band, "band", at::kInt, like);
  check_tensor(share, "share", at::kFloat, like);
  TORCH_CHECK(band.numel() == n && share.numel() == n, "band and share must hold H*(W/2+1) = ", n,
              " entries, got ", band.numel(), " and ", share.numel());
  TORCH_CHECK(n_bands >= 1 && n_bands <= 1024, "n_bands must be in [1, 1024], got ", n_bands);
}

std::tuple<at::Tensor, at::Tensor> mani_band_weights_cuda(const at::Tensor& spectrum, const at::Tensor& band,
                                                          const at::Tensor& share, int64_t n_bands, double gamma,
                                                          double eps0, bool weight_kernel, bool store_stats) {
  const auto [planes, n] = check_half_spectra(spectrum, "spectrum", spectrum);
  check_bands(band, share, n, n_bands, spectrum);
  at::Tensor weighted = at::empty_like(spectrum);
  at::Tensor stats = store_stats ? at::empty({planes, 2, n_bands}, spectrum.options()) : at::empty({0}, spectrum.options());
  const c10::DeviceGuard guard(spectrum.device());
  check_status(manipure::launch_mani_band_weights(
                   static_cast<int>(planes), static_cast<int>((32 + n_bands) * 4), current_stream(spectrum),
                   spectrum.data_ptr<float>(), weighted.data_ptr<float>(),
                   store_stats ? stats.data_ptr<float>() : weighted.data_ptr<float>(), band.data_ptr<int>(),
                   share.data_ptr<float>(), static_cast<int>(n), static_cast<int>(n_bands),
                   static_cast<float>(gamma), static_cast<float>(eps0), weight_kernel, store_stats),
               "mani_band_weights");
  return {weighted, stats};
}

std::tuple<at::Tensor, at::Tensor> mani_map_gradient_cuda(const at::Tensor& grad, const at::Tensor& noise,
                                                          const at::Tensor& shaped, int64_t normalize,
                                                          double noise_scale, bool detach_map, bool noise_grad) {
  const int64_t planes = shaped.dim() == 4 ? shaped.size(0) * shaped.size(1) : 0;
  check_launch(planes, 32 * 4, shaped);
  check_image(grad, "grad", shaped);
  check_image(noise, "noise", shaped);
  check_image(shaped, "shaped", shaped);
  TORCH_CHECK(normalize >= 0 && normalize <= 2, "normalize must be 0 (none), 1 (rms) or 2 (max), got ", normalize);
  at::Tensor g_shaped = detach_map ? at::empty({0}, shaped.options()) : at::empty_like(shaped);
  at::Tensor g_noise = noise_grad ? at::empty_like(shaped) : at::empty({0}, shaped.options());
  if (detach_map && !noise_grad) return {g_shaped, g_noise};  // nothing to compute
  // An output not asked for is passed as the other one, which the kernel does write.
  float* g_shaped_ptr = detach_map ? g_noise.data_ptr<float>() : g_shaped.data_ptr<float>();
  float* g_noise_ptr = noise_grad ? g_noise.data_ptr<float>() : g_shaped.data_ptr<float>();
  const c10::DeviceGuard guard(shaped.device());
  check_status(manipure::launch_mani_map_gradient(
                   static_cast<int>(planes), 32 * 4, current_stream(shaped), grad.data_ptr<float>(),
                   noise.data_ptr<float>(), shaped.data_ptr<float>(), g_shaped_ptr, g_noise_ptr,
                   static_cast<int>(shaped.size(2) * shaped.size(3)), static_cast<int>(normalize),
                   static_cast<float>(noise_scale), detach_map, noise_grad),
               "mani_map_gradient");
  return {g_shaped, g_noise};
}

at::Tensor mani_spectrum_gradient_cuda(const at::Tensor& g_spectrum, const at::Tensor& spectrum,
                                       const at::Tensor& stats, const at::Tensor& band, const at::Tensor& share,
                                       double gamma, bool weight_kernel) {
  const auto [planes, n] = check_half_spectra(spectrum, "spectrum", spectrum);
  check_half_spectra(g_spectrum, "g_spectrum", spectrum);
  check_tensor(stats, "stats", at::kFloat, spectrum);
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == planes && stats.size(1) == 2,
              "stats must be [planes, 2, n_bands] (mani_band_weights' means and weights), got ", stats.sizes());
  const int64_t n_bands = stats.size(2);
  check_bands(band, share, n, n_bands, spectrum);
  at::Tensor g_out = at::empty_like(spectrum);
  const c10::DeviceGuard guard(spectrum.device());
  check_status(manipure::launch_mani_spectrum_gradient(
                   static_cast<int>(planes), static_cast<int>((32 + 2 * n_bands) * 4), current_stream(spectrum),
                   g_spectrum.data_ptr<float>(), spectrum.data_ptr<float>(), g_out.data_ptr<float>(),
                   stats.data_ptr<float>(), band.data_ptr<int>(), share.data_ptr<float>(), static_cast<int>(n),
                   static_cast<int>(n_bands), static_cast<float>(gamma), weight_kernel),
               "mani_spectrum_gradient");
  return g_out;
}

std::tuple<at::Tensor, at::Tensor> mani_inject_cuda(const at::Tensor& x, const at::Tensor& shaped,
                                                    const std::optional<at::Tensor>& noise,
                                                    const std::optional<at::Tensor>& rng_state, int64_t normalize,
                                                    double signal, double noise_scale) {
  const int64_t planes = x.dim() == 4 ? x.size(0) * x.size(1) : 0;
  check_launch(planes, 32 * 4, x);
  check_image(x, "x", x);
  check_image(shaped, "shaped", x);
  TORCH_CHECK(normalize >= 0 && normalize <= 2, "normalize must be 0 (none), 1 (rms) or 2 (max), got ", normalize);
  at::Tensor out = at::empty_like(x);
  const InjectedNoise z = injected_noise(noise, rng_state, x, out, "mani_inject");
  const c10::DeviceGuard guard(x.device());
  check_status(
      manipure::launch_mani_inject(
          static_cast<int>(planes), 32 * 4, current_stream(x), x.data_ptr<float>(), shaped.data_ptr<float>(),
          z.given, out.data_ptr<float>(), z.store, z.rng, static_cast<int>(x.size(2) * x.size(3)),
          static_cast<int>(normalize), static_cast<float>(signal), static_cast<float>(noise_scale), z.has_noise,
          !z.has_noise),
      "mani_inject");
  return {out, z.drawn};
}

// The cluster ops' shared checks (x, the FFT steps, the bands, normalize); returns the plane count.
int64_t check_cluster_launch(const char* op, const at::Tensor& x, const at::Tensor& steps, const at::Tensor& band,
                             const at::Tensor& share, int64_t n_bands, int64_t normalize) {
  const int64_t planes = x.dim() == 4 ? x.size(0) * x.size(1) : 0;
  TORCH_CHECK(planes <= INT32_MAX / manipure::kManiClusterBlocks, "the batch has ", planes, " planes; need up to ",
              INT32_MAX / manipure::kManiClusterBlocks);
  check_launch(planes, 32 * 4, x);
  constexpr int64_t side = manipure::kManiClusterSide;
  TORCH_CHECK(x.size(2) == side && x.size(3) == side, op, " takes ", side, "x", side, " planes, got ", x.size(2),
              "x", x.size(3));
  check_image(x, "x", x);
  check_table(steps, "steps", side, 2, x);
  check_bands(band, share, side * (side / 2 + 1), n_bands, x);
  TORCH_CHECK(normalize >= 0 && normalize <= 2, "normalize must be 0 (none), 1 (rms) or 2 (max), got ", normalize);
  return planes;
}

std::tuple<at::Tensor, at::Tensor> mani_noise_cluster_cuda(const at::Tensor& x, const std::optional<at::Tensor>& noise,
                                                           const std::optional<at::Tensor>& rng_state,
                                                           const at::Tensor& steps, const at::Tensor& band,
                                                           const at::Tensor& share, int64_t n_bands, double gamma,
                                                           double eps0, bool weight_kernel, int64_t normalize,
                                                           double signal, double noise_scale) {
  const int64_t planes = check_cluster_launch("mani_noise_cluster", x, steps, band, share, n_bands, normalize);
  at::Tensor out = at::empty_like(x);
  const InjectedNoise z = injected_noise(noise, rng_state, x, out, "mani_noise_cluster");
  const c10::DeviceGuard guard(x.device());
  check_status(
      manipure::launch_mani_noise_cluster(
          static_cast<int>(planes), current_stream(x), x.data_ptr<float>(), z.given, out.data_ptr<float>(),
          z.store, z.rng, steps.data_ptr<float>(), band.data_ptr<int>(), share.data_ptr<float>(),
          static_cast<int>(n_bands), static_cast<float>(gamma), static_cast<float>(eps0), weight_kernel,
          static_cast<int>(normalize), static_cast<float>(signal), static_cast<float>(noise_scale), z.has_noise,
          !z.has_noise),
      "mani_noise_cluster");
  return {out, z.drawn};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_cluster_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& noise, const at::Tensor& steps,
    const at::Tensor& band, const at::Tensor& share, int64_t n_bands, double gamma, double eps0, bool weight_kernel,
    int64_t normalize, double signal, double noise_scale, bool detach_map, bool noise_grad) {
  const int64_t planes =
      check_cluster_launch("mani_noise_cluster_backward", x, steps, band, share, n_bands, normalize);
  check_image(grad, "grad", x);
  check_image(noise, "noise", x);
  at::Tensor g_x = at::empty_like(x);
  at::Tensor g_noise = noise_grad ? at::empty_like(x) : at::empty({0}, x.options());
  const c10::DeviceGuard guard(x.device());
  check_status(
      manipure::launch_mani_noise_cluster_backward(
          static_cast<int>(planes), current_stream(x), grad.data_ptr<float>(), x.data_ptr<float>(),
          noise.data_ptr<float>(), g_x.data_ptr<float>(), noise_grad ? g_noise.data_ptr<float>() : g_x.data_ptr<float>(),
          steps.data_ptr<float>(), band.data_ptr<int>(), share.data_ptr<float>(), static_cast<int>(n_bands),
          static_cast<float>(gamma), static_cast<float>(eps0), weight_kernel, static_cast<int>(normalize),
          static_cast<float>(signal), static_cast<float>(noise_scale), detach_map, noise_grad),
      "mani_noise_cluster_backward");
  return {g_x, g_noise};
}

// Meta: shapes only, for fake tensors (torch.compile, opcheck).
at::Tensor exchange_update_meta(
    const at::Tensor& x_t, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    at::ArrayRef<double>, bool, bool, int64_t) {
  return at::empty_like(x_t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> exchange_update_backward_meta(
    const at::Tensor&, const at::Tensor& x_t, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>& eps_ref, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, bool, bool, int64_t) {
  return {at::empty_like(x_t), at::empty_like(x_t), at::empty_like(x_t),
          eps_ref.has_value() ? at::empty_like(x_t) : at::empty({0}, x_t.options())};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_meta(
    const at::Tensor& x, const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double, double, bool, int64_t, double, double, int64_t) {
  return {at::empty_like(x), noise.has_value() ? at::empty({0}, x.options()) : at::empty_like(x)};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_backward_meta(
    const at::Tensor&, const at::Tensor& x, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, bool, int64_t,
    double, double, bool, bool noise_grad, int64_t) {
  return {at::empty_like(x), noise_grad ? at::empty_like(x) : at::empty({0}, x.options())};
}

std::tuple<at::Tensor, at::Tensor> mani_band_weights_meta(const at::Tensor& spectrum, const at::Tensor&,
                                                          const at::Tensor&, int64_t n_bands, double, double, bool,
                                                          bool store_stats) {
  const int64_t planes = spectrum.dim() == 5 ? spectrum.size(0) * spectrum.size(1) : 0;
  return {at::empty_like(spectrum), store_stats ? at::empty({planes, 2, n_bands}, spectrum.options())
                                                : at::empty({0}, spectrum.options())};
}

std::tuple<at::Tensor, at::Tensor> mani_map_gradient_meta(const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor& shaped, int64_t, double, bool detach_map,
                                                          bool noise_grad) {
  return {detach_map ? at::empty({0}, shaped.options()) : at::empty_like(shaped),
          noise_grad ? at::empty_like(shaped) : at::empty({0}, shaped.options())};
}

at::Tensor mani_spectrum_gradient_meta(const at::Tensor&, const at::Tensor& spectrum, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, double, bool) {
  return at::empty_like(spectrum);
}

std::tuple<at::Tensor, at::Tensor> mani_inject_meta(const at::Tensor& x, const at::Tensor&,
                                                    const std::optional<at::Tensor>& noise,
                                                    const std::optional<at::Tensor>&, int64_t, double, double) {
  return {at::empty_like(x), noise.has_value() ? at::empty({0}, x.options()) : at::empty_like(x)};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_cluster_meta(const at::Tensor& x, const std::optional<at::Tensor>& noise,
                                                           const std::optional<at::Tensor>&, const at::Tensor&,
                                                           const at::Tensor&, const at::Tensor&, int64_t, double,
                                                           double, bool, int64_t, double, double) {
  return {at::empty_like(x), noise.has_value() ? at::empty({0}, x.options()) : at::empty_like(x)};
}

std::tuple<at::Tensor, at::Tensor> mani_noise_cluster_backward_meta(
    const at::Tensor&, const at::Tensor& x, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, int64_t, double, double, bool, int64_t, double, double, bool, bool noise_grad) {
  return {at::empty_like(x), noise_grad ? at::empty_like(x) : at::empty({0}, x.options())};
}

}  // namespace

TORCH_LIBRARY(manipure_aot, m) {
  // exchange_update_cluster: the same arguments, one cluster per plane (sm_90).
#define MANIPURE_EXCHANGE_UPDATE_ARGUMENTS                                                            \
  "(Tensor x_t, Tensor eps, Tensor ref_t, Tensor? eps_ref, Tensor? noise, Tensor? rng_state, Tensor cos_h, " \
  "Tensor sin_h, Tensor cos_w, Tensor sin_w, Tensor amp_mask, Tensor phase_mask, float[] coefficients, "     \
  "bool phase_project, bool reconstruct_real, int shared_bytes) -> Tensor"
  m.def("exchange_update" MANIPURE_EXCHANGE_UPDATE_ARGUMENTS);
  m.def("exchange_update_cluster" MANIPURE_EXCHANGE_UPDATE_ARGUMENTS);
#undef MANIPURE_EXCHANGE_UPDATE_ARGUMENTS
  // exchange_update_cluster_backward: the same arguments, one cluster per plane (sm_90).
#define MANIPURE_EXCHANGE_UPDATE_BACKWARD_ARGUMENTS                                                   \
  "(Tensor grad, Tensor x_t, Tensor eps, Tensor ref_t, Tensor? eps_ref, Tensor cos_h, Tensor sin_h, " \
  "Tensor cos_w, Tensor sin_w, Tensor amp_mask, Tensor phase_mask, float[] coefficients, "            \
  "bool phase_project, bool reconstruct_real, int shared_bytes) -> (Tensor, Tensor, Tensor, Tensor)"
  m.def("exchange_update_backward" MANIPURE_EXCHANGE_UPDATE_BACKWARD_ARGUMENTS);
  m.def("exchange_update_cluster_backward" MANIPURE_EXCHANGE_UPDATE_BACKWARD_ARGUMENTS);
#undef MANIPURE_EXCHANGE_UPDATE_BACKWARD_ARGUMENTS
  m.def(
      "mani_noise(Tensor x, Tensor? noise, Tensor? rng_state, Tensor cos_h, Tensor sin_h, "
      "Tensor cos_w, Tensor sin_w, Tensor band_map, Tensor band_counts, float gamma, float eps0, "
      "bool weight_kernel, int normalize, float signal, float noise_scale, int shared_bytes) "
      "-> (Tensor, Tensor)");
  m.def(
      "mani_noise_backward(Tensor grad, Tensor x, Tensor noise, Tensor cos_h, Tensor sin_h, "
      "Tensor cos_w, Tensor sin_w, Tensor band_map, Tensor band_counts, float gamma, float eps0, "
      "bool weight_kernel, int normalize, float signal, float noise_scale, bool detach_map, "
      "bool noise_grad, int shared_bytes) -> (Tensor, Tensor)");
  m.def(
      "mani_band_weights(Tensor spectrum, Tensor band, Tensor share, int n_bands, float gamma, float eps0, "
      "bool weight_kernel, bool store_stats) -> (Tensor, Tensor)");
  m.def(
      "mani_inject(Tensor x, Tensor shaped, Tensor? noise, Tensor? rng_state, int normalize, float signal, "
      "float noise_scale) -> (Tensor, Tensor)");
  m.def(
      "mani_noise_cluster(Tensor x, Tensor? noise, Tensor? rng_state, Tensor steps, Tensor band, Tensor share, "
      "int n_bands, float gamma, float eps0, bool weight_kernel, int normalize, float signal, float noise_scale) "
      "-> (Tensor, Tensor)");
  m.def(
      "mani_noise_cluster_backward(Tensor grad, Tensor x, Tensor noise, Tensor steps, Tensor band, Tensor share, "
      "int n_bands, float gamma, float eps0, bool weight_kernel, int normalize, float signal, float noise_scale, "
      "bool detach_map, bool noise_grad) -> (Tensor, Tensor)");
  m.def(
      "mani_map_gradient(Tensor grad, Tensor noise, Tensor shaped, int normalize, float noise_scale, "
      "bool detach_map, bool noise_grad) -> (Tensor, Tensor)");
  m.def(
      "mani_spectrum_gradient(Tensor g_spectrum, Tensor spectrum, Tensor stats, Tensor band, Tensor share, "
      "float gamma, bool weight_kernel) -> Tensor");
}

TORCH_LIBRARY_IMPL(manipure_aot, CUDA, m) {
  m.impl("exchange_update", &exchange_update_cuda<false>);
  m.impl("exchange_update_cluster", &exchange_update_cuda<true>);
  m.impl("exchange_update_backward", &exchange_update_backward_cuda<false>);
  m.impl("exchange_update_cluster_backward", &exchange_update_backward_cuda<true>);
  m.impl("mani_noise", &mani_noise_cuda);
  m.impl("mani_noise_backward", &mani_noise_backward_cuda);
  m.impl("mani_band_weights", &mani_band_weights_cuda);
  m.impl("mani_inject", &mani_inject_cuda);
  m.impl("mani_noise_cluster", &mani_noise_cluster_cuda);
  m.impl("mani_noise_cluster_backward", &mani_noise_cluster_backward_cuda);
  m.impl("mani_map_gradient", &mani_map_gradient_cuda);
  m.impl("mani_spectrum_gradient", &mani_spectrum_gradient_cuda);
}

TORCH_LIBRARY_IMPL(manipure_aot, Meta, m) {
  m.impl("exchange_update", &exchange_update_meta);
  m.impl("exchange_update_cluster", &exchange_update_meta);
  m.impl("exchange_update_backward", &exchange_update_backward_meta);
  m.impl("exchange_update_cluster_backward", &exchange_update_backward_meta);
  m.impl("mani_noise", &mani_noise_meta);
  m.impl("mani_noise_backward", &mani_noise_backward_meta);
  m.impl("mani_band_weights", &mani_band_weights_meta);
  m.impl("mani_inject", &mani_inject_meta);
  m.impl("mani_noise_cluster", &mani_noise_cluster_meta);
  m.impl("mani_noise_cluster_backward", &mani_noise_cluster_backward_meta);
  m.impl("mani_map_gradient", &mani_map_gradient_meta);
  m.impl("mani_spectrum_gradient", &mani_spectrum_gradient_meta);
}

// The ops register when the library is loaded; the module object itself is empty. Building it as
// a Python extension lets `import manipure_fast._cuda_ops` find it wherever pip installed it.
PyMODINIT_FUNC PyInit__cuda_ops(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_ops", nullptr, -1, nullptr,
                               nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
