"""The ``cuda`` backend: the CUDA C++ kernels in ``kernels/cuda``, launched on torch's current stream
by one of two loaders of the same sources:

- ``aot``: the ahead-of-time library ``manipure_fast._cuda_ops`` (root ``CMakeLists.txt``, built by
  ``MANIPURE_BUILD_CUDA=1 pip install --no-build-isolation -e .``), whose ``torch.library`` ops
  ``manipure_aot::exchange_update`` and ``manipure_aot::mani_noise`` launch the kernels;
  ``MANIPURE_CUDA_LIBRARY=/path/to/_cuda_ops*.so`` loads a library built elsewhere.
- ``jit``: NVRTC through CuPy's ``RawModule``, compiled at first use per device; tensors pass
  zero-copy through ``__cuda_array_interface__``.

``MANIPURE_CUDA_LOADER`` = ``auto`` (the library if it loads, else the JIT), ``aot`` or ``jit``.

Chain: kernels -> a loader's launch (one call shape for both: images, the cached DFT tables and
masks built here, scalars, shared-memory bytes) -> the ``torch.library`` custom ops
``manipure::exchange_update_cuda`` and ``manipure::mani_noise_cuda`` (fake implementations for
tracing; exchange_update's backward is the fused kernel ``exchange_update_backward.cu``, itself the
custom op ``manipure::exchange_update_backward_cuda``, and mani_noise's is
``mani_noise_backward.cu`` as ``manipure::mani_noise_backward_cuda``) -> ``ops``.

MANI planes above 64x64 take four launches: cuFFT's ``rfft2``, ``mani_noise_large.cu``'s band-weights
kernel, ``irfft2`` and its injection kernel. Their backward is eight: the forward recomputed, then
``mani_noise_large_backward.cu``'s two kernels around ``rfft2`` and ``irfft2``. On GPUs with
thread-block clusters (sm_90 and later), 256x256 planes take one launch of
``mani_noise_cluster.cu`` instead (``takes_cluster_path``), and their backward one launch of
``mani_noise_cluster_backward.cu``. The exchange on those GPUs and planes runs
``exchange_update_cluster.cu``, eight blocks per plane (``takes_exchange_cluster_path``), and its
backward ``exchange_update_cluster_backward.cu``.

Noise is given, or drawn in the kernel from Philox with ``rng_state`` (int64 ``[2]`` seed/offset on
the device). The custom ops only read ``rng_state`` (functional ops, so autograd can be
registered); ``exchange_update`` and ``mani_noise`` here advance its offset on the device after each
launch, so captured graphs draw fresh noise on replay.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from pathlib import Path

import torch

from ..reference.grid import band_one_hot
from ..reference.schedule import noise_coefficients
from .dft_tables import (
    band_masks,
    band_size,
    band_tables,
    fft_steps,
    full_tables,
    half_spectrum_bands,
    padded_band_map,
)

THREADS = 256
MAX_SHARED_BYTES = 200 * 1024  # below the H100's 227 KB opt-in limit per block
# The exchange kernels' widest row: a warp holds a row in registers, 8 pixels a lane
# (exchange_stages.cuh kMaxRowWidth; torch_library.cpp refuses wider planes too).
EXCHANGE_MAX_WIDTH = 256
NORMALIZE_CODES = {"none": 0, "rms": 1, "max": 2}
COEFFICIENTS = (
    "sqrt_abar",
    "sqrt_one_minus_abar",
    "ref_sqrt_abar",
    "ref_sqrt_one_minus_abar",
    "sqrt_abar_next",
    "c1",
    "c2",
    "delta",
)


def cuda_source_dir() -> Path:
    """``kernels/cuda``, wherever the package is installed (it installs as manipure_fast.kernels)."""
    from .. import kernels

    return Path(kernels.__file__).resolve().parent / "cuda"


def kernel_source(file: str) -> str:
    """A kernel file with its local headers (``#include "x.cuh"``) inlined, recursively, so NVRTC
    needs no include path and CuPy's source-hash cache sees header changes. The headers' include
    guards make repeated inlining harmless."""
    folder = cuda_source_dir()

    def inline(match: re.Match) -> str:
        return _LOCAL_INCLUDE.sub(inline, (folder / match.group(1)).read_text())

    return _LOCAL_INCLUDE.sub(inline, (folder / file).read_text())


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"$', re.MULTILINE)


@functools.lru_cache(maxsize=1)
def cupy_unavailable_reason() -> str | None:
    """None if CuPy imports and sees a CUDA device, else why not (asked once per process: the
    backend checks it on every op call)."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install cupy-cuda13x)"
    try:
        if not cupy.cuda.is_available():
            return "cupy sees no CUDA device"
    except Exception as error:  # a driver problem is a reason, not a crash
        return f"cupy cannot reach a CUDA device ({error})"
    return None


# The kernels' tensor-core path (tensor_core_dft.cuh) issues TF32 mma.sync, which sm_80 added; it
# is compiled into the kernels whatever the plane size.
MIN_COMPUTE_CAPABILITY = (8, 0)


def capability_unsupported_reason(capability: tuple[int, int]) -> str | None:
    """None if a GPU of this compute capability runs the kernels, else why not."""
    if tuple(capability) >= MIN_COMPUTE_CAPABILITY:
        return None
    major, minor = capability
    return (
        f"the cuda kernels use TF32 tensor-core instructions, which need compute capability "
        f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer; this GPU has {major}.{minor}"
    )


LOADERS = ("aot", "jit")
BUILD_HINT = "MANIPURE_BUILD_CUDA=1 pip install --no-build-isolation -e ."


@functools.lru_cache(maxsize=1)
def aot_unavailable_reason() -> str | None:
    """None once the ahead-of-time library is loaded (its ops registered), else why it is not.
    Loads at most once per process: a second load would register the ops twice."""
    path = os.environ.get("MANIPURE_CUDA_LIBRARY")
    try:
        if path:
            torch.ops.load_library(path)
        else:
            importlib.import_module(__name__.rsplit(".", 2)[0] + "._cuda_ops")
    except (ImportError, OSError) as error:
        where = path or "manipure_fast._cuda_ops"
        return f"the ahead-of-time CUDA library {where} does not load ({error}); build it with {BUILD_HINT}"
    return None


def requested_loader() -> str:
    name = os.environ.get("MANIPURE_CUDA_LOADER", "auto")
    if name not in LOADERS + ("auto",):
        raise ValueError(f"MANIPURE_CUDA_LOADER must be one of {LOADERS + ('auto',)}, got {name!r}")
    return name


def loader_unavailable_reason(loader: str) -> str | None:
    return aot_unavailable_reason() if loader == "aot" else cupy_unavailable_reason()


def cuda_unavailable_reason() -> str | None:
    """None if a loader the environment allows can launch the kernels, else why not."""
    name = requested_loader()
    reasons = []
    for candidate in LOADERS if name == "auto" else (name,):
        reason = loader_unavailable_reason(candidate)
        if reason is None:
            return None
        reasons.append(reason)
    return "; ".join(reasons)


def active_loader() -> str:
    """The loader that launches the next kernel: the requested one, or under ``auto`` the library
    when it loads (no JIT compile, no CuPy), else the JIT."""
    name = requested_loader()
    if name == "auto":
        return "aot" if aot_unavailable_reason() is None else "jit"
    return name


# The JIT's options to NVRTC; CuPy adds -ftz=true and the device's architecture.
# tests/test_cuda_ops.py compiles every kernel file with NVRTC itself and these options.
NVRTC_OPTIONS = ("-std=c++17",)


@functools.lru_cache(maxsize=16)
def _kernel(file: str, name: str, device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=kernel_source(file), options=NVRTC_OPTIONS)
        kernel = module.get_function(name)
        kernel.max_dynamic_shared_size_bytes = MAX_SHARED_BYTES
    return kernel


def _launch(file: str, name: str, device: torch.device, grid: int, args: tuple, shared_bytes: int) -> None:
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _kernel(file, name, index)
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        converted = tuple(cupy.asarray(a) if isinstance(a, torch.Tensor) else a for a in args)
        kernel((grid,), (THREADS,), converted, shared_mem=shared_bytes)


def _i32(v) -> object:
    import numpy

    return numpy.int32(v)


def _f32(v) -> object:
    import numpy

    return numpy.float32(v)


# ---- thread-block clusters ----------------------------------------------------------------------

# 256x256 planes (ImageNet's) run on thread-block clusters of eight blocks per plane on GPUs that
# have them (sm_90 and later): exchange_update_cluster.cu, and MANI's mani_noise_cluster.cu (below).
CLUSTER_SIDE = 256
CLUSTER_BLOCKS = 8  # the kernels' kClusterBlocks and kExchangeClusterBlocks
CLUSTER_CAPABILITY = (9, 0)


def on_cluster_plane(x: torch.Tensor) -> bool:
    """Whether ``x`` has 256x256 planes on a device with clusters (CPU tensors only reach the
    kernels under the tests' CPU runtime, which has them)."""
    if tuple(x.shape[-2:]) != (CLUSTER_SIDE, CLUSTER_SIDE):
        return False
    return x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) >= CLUSTER_CAPABILITY


# ---- exchange_update ----------------------------------------------------------------------------

# Set EXCHANGE_CLUSTER False to run 256x256 planes one block per plane instead, forward and
# backward (bench/tune_cuda.py times the two against each other).
EXCHANGE_CLUSTER = True


def takes_exchange_cluster_path(x: torch.Tensor) -> bool:
    """Whether exchange_update and its backward run ``x`` on clusters (``on_cluster_plane``)."""
    return EXCHANGE_CLUSTER and on_cluster_plane(x)


# Planes up to this side take the kernels' tensor-core transforms, in padded tiles of [32 x 36]
# floats (tensor_core_dft.cuh kTensorCoreMaxSide, kTileSide and kTileStride; bench/tune_cuda.py
# sets both this and the kernels' to 0 to time the FMA loops against them).
TENSOR_CORE_SIDE = 32
_TILE_BYTES = 32 * 36 * 4


def exchange_shared_bytes(h: int, w: int, cut: float) -> int:
    """exchange_update.cu: twelve padded tiles up to 32x32, else two [H, KW] and two [KH, KW]
    float2 arrays."""
    if max(h, w) <= TENSOR_CORE_SIDE:
        return 12 * _TILE_BYTES
    kh, kw = band_size(h, cut), band_size(w, cut)
    return (2 * h * kw + 2 * kh * kw) * 8


def exchange_cluster_shared_bytes(h: int, w: int, cut: float) -> int:
    """exchange_update_cluster.cu: a block's two [H / 8, KW] row transforms and four [KH, KW]
    spectra (its shares, then the sums), float2."""
    kh, kw = band_size(h, cut), band_size(w, cut)
    return (2 * (h // CLUSTER_BLOCKS) * kw + 4 * kh * kw) * 8


def exchange_cluster_backward_shared_bytes(h: int, w: int, cut: float) -> int:
    """exchange_update_cluster_backward.cu: a block's two [H / 8, KW] transforms and five [KH, KW]
    spectra (the summed F_p and F_q, its shares of them and of g_Delta), float2."""
    kh, kw = band_size(h, cut), band_size(w, cut)
    return (2 * (h // CLUSTER_BLOCKS) * kw + 5 * kh * kw) * 8


def exchange_backward_shared_bytes(h: int, w: int, cut: float) -> int:
    """exchange_update_backward.cu: the forward's twelve padded tiles up to 32x32, else two [H, KW]
    and three [KH, KW] float2 arrays."""
    if max(h, w) <= TENSOR_CORE_SIDE:
        return 12 * _TILE_BYTES
    kh, kw = band_size(h, cut), band_size(w, cut)
    return (2 * h * kw + 3 * kh * kw) * 8


def _exchange_arguments(x_t, eps, ref_t, eps_ref, noise, rng_state, cos_h, sin_h, cos_w, sin_w, amp_mask,
                        phase_mask, coefficients, phase_project, reconstruct_real):  # fmt: skip
    """(the output, the exchange kernels' arguments)."""
    _, _, h, w = x_t.shape
    out = torch.empty_like(x_t)
    args = (
        x_t, eps, ref_t, eps_ref if eps_ref is not None else x_t, noise if noise is not None else x_t, out,
        rng_state if rng_state is not None else torch.zeros(2, dtype=torch.int64, device=x_t.device),
        cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask,
        _i32(h), _i32(w), _i32(cos_h.shape[0]), _i32(cos_w.shape[0]), *(_f32(v) for v in coefficients),
        _i32(eps_ref is not None), _i32(noise is not None), _i32(phase_project), _i32(reconstruct_real),
    )  # fmt: skip
    return out, args


def launch_exchange_update(
    x_t,
    eps,
    ref_t,
    eps_ref,
    noise,
    rng_state,
    coefficients,
    amplitude_cut_range,
    phase_cut_range,
    phase_project,
    reconstruct_real,
) -> torch.Tensor:
    """One launch over all B*C planes (in clusters of eight blocks per plane at 256x256, see
    ``takes_exchange_cluster_path``); fp32 contiguous inputs; returns x_next."""
    launch, shared, tables = _exchange_kernel(x_t, amplitude_cut_range, phase_cut_range, backward=False)
    return launch(
        x_t, eps, ref_t, eps_ref, noise, rng_state, *tables, list(coefficients), bool(phase_project),
        bool(reconstruct_real), shared,
    )  # fmt: skip


def _exchange_tables(x_t, amplitude_cut_range, phase_cut_range, shared_bytes):
    """(shared bytes, (cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask)) for one exchange kernel;
    refuses planes wider than the kernels' rows, and a band whose working set does not fit one
    block's shared memory."""
    _, _, h, w = x_t.shape
    if w > EXCHANGE_MAX_WIDTH:
        raise ValueError(
            f"cuda exchange_update takes planes up to {EXCHANGE_MAX_WIDTH} pixels wide, got {h}x{w} "
            "(use the triton or reference backend)"
        )
    cut = max(amplitude_cut_range, phase_cut_range)
    shared = shared_bytes(h, w, cut)
    if shared > MAX_SHARED_BYTES:
        raise ValueError(
            f"cuda exchange_update needs {shared} bytes of shared memory for {h}x{w} planes at cut "
            f"radius {cut}; the limit is {MAX_SHARED_BYTES} (use the triton or reference backend)"
        )
    device = x_t.device
    kh, kw = band_size(h, cut), band_size(w, cut)
    cos_h, sin_h = band_tables(h, cut, kh, h, device)
    cos_w, sin_w = band_tables(w, cut, kw, w, device)
    amp_mask, phase_mask = band_masks(h, w, amplitude_cut_range, phase_cut_range, kh, kw, device)
    return shared, (cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask)


def _exchange_backward_arguments(grad, x_t, eps, ref_t, eps_ref, cos_h, sin_h, cos_w, sin_w, amp_mask,
                                 phase_mask, coefficients, project, real):  # fmt: skip
    """((g_x_t, g_eps, g_ref_t, g_eps_ref), the exchange backward kernels' arguments); g_eps_ref is
    empty without eps_ref."""
    _, _, h, w = x_t.shape
    g_x_t, g_eps, g_ref_t = torch.empty_like(x_t), torch.empty_like(x_t), torch.empty_like(x_t)
    g_eps_ref = torch.empty_like(x_t) if eps_ref is not None else x_t.new_empty(0)
    args = (
        grad, x_t, eps, ref_t, eps_ref if eps_ref is not None else x_t, g_x_t, g_eps, g_ref_t,
        g_eps_ref if eps_ref is not None else g_ref_t, cos_h, sin_h, cos_w, sin_w, amp_mask, phase_mask,
        _i32(h), _i32(w), _i32(cos_h.shape[0]), _i32(cos_w.shape[0]), *(_f32(v) for v in coefficients),
        _i32(eps_ref is not None), _i32(project), _i32(real),
    )  # fmt: skip
    return (g_x_t, g_eps, g_ref_t, g_eps_ref), args


def _jit_exchange_launch(op: str, backward: bool, blocks_per_plane: int):
    """The JIT loader's launch of ``kernels/cuda/<op>.cu``'s ``<op>_kernel``, in the call shape of
    ``manipure_aot::<op>`` (the exchange ops' arguments, then ``shared_bytes``), with
    ``blocks_per_plane`` blocks for each of the B*C planes. Returns what the op returns."""
    arguments = _exchange_backward_arguments if backward else _exchange_arguments

    def launch(*call):
        *call, shared_bytes = call
        x_t = call[1] if backward else call[0]  # the backward's first argument is grad
        result, args = arguments(*call)
        b, c, _, _ = x_t.shape
        _launch(f"{op}.cu", f"{op}_kernel", x_t.device, b * c * blocks_per_plane, args, shared_bytes)
        return result

    launch.__doc__ = f"The JIT loader's launch, in the call shape of ``manipure_aot::{op}``."
    return launch


_jit_exchange_update = _jit_exchange_launch("exchange_update", False, 1)
_jit_exchange_update_cluster = _jit_exchange_launch("exchange_update_cluster", False, CLUSTER_BLOCKS)
_jit_exchange_update_backward = _jit_exchange_launch("exchange_update_backward", True, 1)
_jit_exchange_update_cluster_backward = _jit_exchange_launch(
    "exchange_update_cluster_backward", True, CLUSTER_BLOCKS
)

# (on clusters, backward) -> (the AOT op, the JIT loader's launch of the same kernel, its shared bytes)
_EXCHANGE_KERNELS = {
    (False, False): ("exchange_update", _jit_exchange_update, exchange_shared_bytes),
    (True, False): ("exchange_update_cluster", _jit_exchange_update_cluster, exchange_cluster_shared_bytes),
    (False, True): (
        "exchange_update_backward",
        _jit_exchange_update_backward,
        exchange_backward_shared_bytes,
    ),
    (True, True): (
        "exchange_update_cluster_backward",
        _jit_exchange_update_cluster_backward,
        exchange_cluster_backward_shared_bytes,
    ),
}


def _exchange_kernel(x_t, amplitude_cut_range, phase_cut_range, backward: bool):
    """(launch, shared bytes, tables) for the exchange kernel that takes ``x_t``'s planes: one block
    or one cluster per plane (``takes_exchange_cluster_path``), forward or backward, through the
    active loader."""
    op, jit_launch, shared_bytes = _EXCHANGE_KERNELS[(takes_exchange_cluster_path(x_t), backward)]
    shared, tables = _exchange_tables(x_t, amplitude_cut_range, phase_cut_range, shared_bytes)
    launch = getattr(torch.ops.manipure_aot, op) if active_loader() == "aot" else jit_launch
    return launch, shared, tables


def launch_exchange_update_backward(
    grad,
    x_t,
    eps,
    ref_t,
    eps_ref,
    coefficients,
    amplitude_cut_range,
    phase_cut_range,
    phase_project,
    reconstruct_real,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients for (x_t, eps, ref_t, eps_ref), one launch (in clusters of eight blocks per
    plane at 256x256, as the forward); the last is empty without eps_ref."""
    launch, shared, tables = _exchange_kernel(x_t, amplitude_cut_range, phase_cut_range, backward=True)
    return launch(
        grad, x_t, eps, ref_t, eps_ref, *tables, list(coefficients), bool(phase_project),
        bool(reconstruct_real), shared,
    )  # fmt: skip


@torch.library.custom_op("manipure::exchange_update_cuda", mutates_args=(), device_types="cuda")
def exchange_update_cuda(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    ref_t: torch.Tensor,
    eps_ref: torch.Tensor | None,
    noise: torch.Tensor | None,
    rng_state: torch.Tensor | None,
    coefficients: list[float],
    amplitude_cut_range: float,
    phase_cut_range: float,
    phase_project: bool,
    reconstruct_real: bool,
) -> torch.Tensor:
    """``reference.exchange_update`` in one CUDA launch; ``coefficients`` in ``COEFFICIENTS`` order."""
    return launch_exchange_update(
        x_t, eps, ref_t, eps_ref, noise, rng_state, coefficients, amplitude_cut_range, phase_cut_range,
        phase_project, reconstruct_real,
    )  # fmt: skip


@exchange_update_cuda.register_fake
def _(x_t, eps, ref_t, eps_ref, noise, rng_state, coefficients, *args):
    return torch.empty_like(x_t)


@torch.library.custom_op("manipure::exchange_update_backward_cuda", mutates_args=(), device_types="cuda")
def exchange_update_backward_cuda(
    grad: torch.Tensor,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    ref_t: torch.Tensor,
    eps_ref: torch.Tensor | None,
    coefficients: list[float],
    amplitude_cut_range: float,
    phase_cut_range: float,
    phase_project: bool,
    reconstruct_real: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused backward of ``exchange_update_cuda``: gradients for (x_t, eps, ref_t, eps_ref)."""
    return launch_exchange_update_backward(
        grad, x_t, eps, ref_t, eps_ref, coefficients, amplitude_cut_range, phase_cut_range, phase_project,
        reconstruct_real,
    )  # fmt: skip


@exchange_update_backward_cuda.register_fake
def _(grad, x_t, eps, ref_t, eps_ref, *args):
    g_eps_ref = torch.empty_like(x_t) if eps_ref is not None else x_t.new_empty(0)
    return torch.empty_like(x_t), torch.empty_like(x_t), torch.empty_like(x_t), g_eps_ref


def _exchange_setup(ctx, inputs, output):
    x_t, eps, ref_t, eps_ref, noise, _rng, coefficients, amp, phase, project, real = inputs
    ctx.save_for_backward(x_t, eps, ref_t, eps_ref)
    ctx.options = (coefficients, amp, phase, project, real)
    ctx.has_noise = noise is not None


def _exchange_backward(ctx, grad):
    x_t, eps, ref_t, eps_ref = ctx.saved_tensors
    coefficients = ctx.options[0]
    g_x_t, g_eps, g_ref_t, g_eps_ref = exchange_update_backward_cuda(
        grad.contiguous(), x_t, eps, ref_t, eps_ref, *ctx.options
    )
    # x_next is linear in the noise with slope c1.
    noise_grad = grad * coefficients[COEFFICIENTS.index("c1")] if ctx.has_noise else None
    g_eps_ref = g_eps_ref if eps_ref is not None else None
    return g_x_t, g_eps, g_ref_t, g_eps_ref, noise_grad, None, None, None, None, None, None


exchange_update_cuda.register_autograd(_exchange_backward, setup_context=_exchange_setup)


# ---- mani_noise ---------------------------------------------------------------------------------

# The one-block-per-plane kernels' limit: their spectrum and twiddle work live in shared memory.
# Larger planes take the large-plane path: cuFFT's rfft2 and irfft2 around the two kernels of
# mani_noise_large.cu, four launches (as the triton backend's large-plane path).
MANI_MAX_SIDE = 64


def mani_shared_bytes(h: int, w: int, n_bands: int) -> int:
    """mani_noise.cu: nine padded tiles up to 32x32 (TENSOR_CORE_SIDE), else an [H W] float and
    two [H W] float2 arrays; then scratch and n_bands floats."""
    n = h * w
    if max(h, w) <= TENSOR_CORE_SIDE:
        return 9 * _TILE_BYTES + (32 + n_bands) * 4
    return ((n + 1) & ~1) * 4 + 2 * n * 8 + (32 + n_bands) * 4


def mani_backward_shared_bytes(h: int, w: int, n_bands: int) -> int:
    """mani_noise_backward.cu: eleven padded tiles up to 32x32, else three [H W] float2 arrays; then
    scratch and three n_bands floats."""
    if max(h, w) <= TENSOR_CORE_SIDE:
        return 11 * _TILE_BYTES + (32 + 3 * n_bands) * 4
    return 3 * h * w * 8 + (32 + 3 * n_bands) * 4


def _mani_tables(x, n_bands, band_mode):
    """(cos_h, sin_h, cos_w, sin_w, band map, band counts) for the MANI kernels, cached."""
    _, _, h, w = x.shape
    cos_h, sin_h = full_tables(h, h, x.device)
    cos_w, sin_w = full_tables(w, w, x.device)
    bands = padded_band_map(h, w, n_bands, band_mode, h, w, x.device)
    _, counts = band_one_hot(h, w, n_bands, band_mode, x.device)
    return cos_h, sin_h, cos_w, sin_w, bands, counts


class _Injection:
    """The MANI injection kernels' noise arguments for ``x``: the output, the noise drawn (or an
    empty tensor when ``noise`` is given), and what the kernel takes for noise, its output, the
    drawn noise's buffer and the generator state. A pointer the kernel does not use is passed as
    a tensor it does use (an input, or the output it writes)."""

    def __init__(self, x, noise, rng_state):
        self.out = torch.empty_like(x)
        self.drawn = torch.empty_like(x) if noise is None else x.new_empty(0)
        self.arguments = (
            noise if noise is not None else x, self.out, self.drawn if noise is None else self.out,
            rng_state if rng_state is not None else torch.zeros(2, dtype=torch.int64, device=x.device),
        )  # fmt: skip
        self.flags = (_i32(noise is not None), _i32(noise is None))  # has_noise, store_noise


def _jit_mani_noise(x, noise, rng_state, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, gamma, eps0,
                    weight_kernel, normalize, signal, noise_scale, shared_bytes):  # fmt: skip
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_noise``."""
    b, c, h, w = x.shape
    injection = _Injection(x, noise, rng_state)
    args = (
        x, *injection.arguments, cos_h, sin_h, cos_w, sin_w, band_map, band_counts,
        _i32(h), _i32(w), _i32(band_counts.numel()), _f32(gamma), _f32(eps0), _i32(weight_kernel),
        _i32(normalize), _f32(signal), _f32(noise_scale), *injection.flags,
    )  # fmt: skip
    _launch("mani_noise.cu", "mani_noise_kernel", x.device, b * c, args, shared_bytes)
    return injection.out, injection.drawn


def _is_large(x: torch.Tensor) -> bool:
    return max(x.shape[-2:]) > MANI_MAX_SIDE


def _jit_mani_band_weights(spectrum, band, share, n_bands, gamma, eps0, weight_kernel, store_stats):
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_band_weights``."""
    b, c, h, half, _ = spectrum.shape
    weighted = torch.empty_like(spectrum)
    stats = spectrum.new_empty(b * c, 2, n_bands) if store_stats else spectrum.new_empty(0)
    args = (
        spectrum, weighted, stats if store_stats else weighted, band, share, _i32(h * half), _i32(n_bands),
        _f32(gamma), _f32(eps0), _i32(weight_kernel), _i32(store_stats),
    )  # fmt: skip
    _launch(
        "mani_noise_large.cu", "mani_band_weights_kernel", spectrum.device, b * c, args, (32 + n_bands) * 4
    )
    return weighted, stats


def _jit_mani_map_gradient(grad, noise, shaped, normalize, noise_scale, detach_map, noise_grad):
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_map_gradient``."""
    b, c, h, w = shaped.shape
    g_shaped = shaped.new_empty(0) if detach_map else torch.empty_like(shaped)
    g_noise = torch.empty_like(shaped) if noise_grad else shaped.new_empty(0)
    if detach_map and not noise_grad:
        return g_shaped, g_noise  # nothing to compute
    # An output not asked for is passed as the other one, which the kernel does write.
    args = (
        grad, noise, shaped, g_noise if detach_map else g_shaped, g_noise if noise_grad else g_shaped,
        _i32(h * w), _i32(normalize), _f32(noise_scale), _i32(detach_map), _i32(noise_grad),
    )  # fmt: skip
    _launch("mani_noise_large_backward.cu", "mani_map_gradient_kernel", shaped.device, b * c, args, 32 * 4)
    return g_shaped, g_noise


def _jit_mani_spectrum_gradient(g_spectrum, spectrum, stats, band, share, gamma, weight_kernel):
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_spectrum_gradient``."""
    b, c, h, half, _ = spectrum.shape
    n_bands = stats.shape[-1]
    g_out = torch.empty_like(spectrum)
    args = (
        g_spectrum, spectrum, g_out, stats, band, share, _i32(h * half), _i32(n_bands), _f32(gamma),
        _i32(weight_kernel),
    )  # fmt: skip
    _launch(
        "mani_noise_large_backward.cu", "mani_spectrum_gradient_kernel", spectrum.device, b * c, args,
        (32 + 2 * n_bands) * 4,
    )  # fmt: skip
    return g_out


def _jit_mani_inject(x, shaped, noise, rng_state, normalize, signal, noise_scale):
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_inject``."""
    b, c, h, w = x.shape
    injection = _Injection(x, noise, rng_state)
    args = (
        x, shaped, *injection.arguments, _i32(h * w), _i32(normalize), _f32(signal), _f32(noise_scale),
        *injection.flags,
    )  # fmt: skip
    _launch("mani_noise_large.cu", "mani_inject_kernel", x.device, b * c, args, 32 * 4)
    return injection.out, injection.drawn


# 256x256 planes (ImageNet's) take one launch on GPUs with thread-block clusters (sm_90 and
# later), forward and backward: mani_noise_cluster.cu and mani_noise_cluster_backward.cu, a cluster
# of eight blocks per plane holding its spectra in shared memory. Set MANI_CLUSTER False to send
# them down the large-plane path instead (bench/tune_cuda.py times the two against each other).
MANI_CLUSTER = True


def _cluster_shared_bytes(slabs: int, floats: int) -> int:
    """mani_cluster_stages.cuh's cluster_shared_bytes: ``slabs`` sets of 16 FFT buffers of
    16 x 17 + 1 float2, 32 rows of 129 float2 and 256 float2 of FFT steps; then 32 floats of
    scratch and ``floats`` more."""
    return (slabs * 16 * 273 + 32 * 129 + 256) * 8 + (32 + floats) * 4


def mani_cluster_shared_bytes(n_bands: int) -> int:
    """mani_noise_cluster.cu: one slab; band sums, the statistic's slot and weights."""
    return _cluster_shared_bytes(1, 2 * n_bands + 1)


def mani_cluster_backward_shared_bytes(n_bands: int) -> int:
    """mani_noise_cluster_backward.cu: two slabs (F kept); two sets of band sums, three statistic
    slots, the means, weights and mean gradients."""
    return _cluster_shared_bytes(2, 5 * n_bands + 3)


# The most MANI bands the kernels take (torch_library.cpp's check_bands): every path's shared
# memory then holds the bands' sums, backward too (the cluster backward's 125 KB the most).
MANI_MAX_BANDS = 1024


def mani_unsupported_reason(n_bands: int) -> str | None:
    """None if the MANI kernels take ``n_bands`` bands, else why not. Checked when the backend is
    chosen, before any launch, so "auto" passes such calls on and a backward never fails after
    its forward ran."""
    if n_bands <= MANI_MAX_BANDS:
        return None
    return (
        f"cuda mani_noise takes up to {MANI_MAX_BANDS} bands, not {n_bands} "
        "(use the triton or reference backend)"
    )


def takes_cluster_path(x: torch.Tensor) -> bool:
    """Whether mani_noise runs ``x`` as one cluster launch (``on_cluster_plane``)."""
    return MANI_CLUSTER and on_cluster_plane(x)


def _jit_mani_noise_cluster(x, noise, rng_state, steps, band, share, n_bands, gamma, eps0, weight_kernel,
                            normalize, signal, noise_scale):  # fmt: skip
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_noise_cluster``."""
    b, c, _, _ = x.shape
    injection = _Injection(x, noise, rng_state)
    args = (
        x, *injection.arguments, steps, band, share, _i32(n_bands), _f32(gamma), _f32(eps0),
        _i32(weight_kernel), _i32(normalize), _f32(signal), _f32(noise_scale), *injection.flags,
    )  # fmt: skip
    _launch(
        "mani_noise_cluster.cu", "mani_noise_cluster_kernel", x.device, b * c * CLUSTER_BLOCKS, args,
        mani_cluster_shared_bytes(n_bands),
    )  # fmt: skip
    return injection.out, injection.drawn


def _jit_mani_noise_cluster_backward(grad, x, noise, steps, band, share, n_bands, gamma, eps0, weight_kernel,
                                     normalize, signal, noise_scale, detach_map, noise_grad):  # fmt: skip
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_noise_cluster_backward``."""
    b, c, _, _ = x.shape
    g_x = torch.empty_like(x)
    g_noise = torch.empty_like(x) if noise_grad else x.new_empty(0)
    args = (
        grad, x, noise, g_x, g_noise if noise_grad else g_x, steps, band, share, _i32(n_bands), _f32(gamma),
        _f32(eps0), _i32(weight_kernel), _i32(normalize), _f32(signal), _f32(noise_scale), _i32(detach_map),
        _i32(noise_grad),
    )  # fmt: skip
    _launch(
        "mani_noise_cluster_backward.cu", "mani_noise_cluster_backward_kernel", x.device,
        b * c * CLUSTER_BLOCKS, args, mani_cluster_backward_shared_bytes(n_bands),
    )  # fmt: skip
    return g_x, g_noise


def launch_mani_noise_large(x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map, normalize):
    """The large-plane path, any plane size: ``rfft2``, the band-weights kernel, ``irfft2``, the
    injection kernel. Same contract as ``launch_mani_noise``."""
    _, _, h, w = x.shape
    coef = noise_coefficients(t)
    aot = active_loader() == "aot"
    band_weights = torch.ops.manipure_aot.mani_band_weights if aot else _jit_mani_band_weights
    inject = torch.ops.manipure_aot.mani_inject if aot else _jit_mani_inject
    band, share = half_spectrum_bands(h, w, n_bands, band_mode, x.device)
    spectrum = torch.view_as_real(torch.fft.rfft2(x))
    weighted, _ = band_weights(
        spectrum, band, share, n_bands, float(gamma), float(eps0), weight_map == "kernel", False
    )
    shaped = torch.fft.irfft2(torch.view_as_complex(weighted), s=(h, w))
    return inject(
        x, shaped, noise, rng_state, NORMALIZE_CODES[normalize], float(coef.signal), float(coef.noise)
    )


def launch_mani_noise_large_backward(grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map,
                                     normalize, detach_map, noise_grad):  # fmt: skip
    """The large-plane path's backward, any plane size: the forward recomputed (``rfft2``, the
    band-weights kernel with its statistics stored, ``irfft2``), the map-gradient kernel, ``rfft2``,
    the spectrum-gradient kernel and ``irfft2``. Same contract as ``launch_mani_noise_backward``."""
    _, _, h, w = x.shape
    coef = noise_coefficients(t)
    if detach_map and not noise_grad:  # the map's value is not needed: nothing to recompute
        return grad * float(coef.signal), grad.new_empty(0)
    aot = active_loader() == "aot"
    library = torch.ops.manipure_aot if aot else None
    band_weights = library.mani_band_weights if aot else _jit_mani_band_weights
    map_gradient = library.mani_map_gradient if aot else _jit_mani_map_gradient
    spectrum_gradient = library.mani_spectrum_gradient if aot else _jit_mani_spectrum_gradient
    band, share = half_spectrum_bands(h, w, n_bands, band_mode, x.device)
    spectrum = torch.view_as_real(torch.fft.rfft2(x))
    kernel_map = weight_map == "kernel"
    weighted, stats = band_weights(
        spectrum, band, share, n_bands, float(gamma), float(eps0), kernel_map, True
    )
    shaped = torch.fft.irfft2(torch.view_as_complex(weighted), s=(h, w))
    g_shaped, g_noise = map_gradient(
        grad, noise, shaped, NORMALIZE_CODES[normalize], float(coef.noise), bool(detach_map), bool(noise_grad)
    )
    if detach_map:
        return grad * float(coef.signal), g_noise
    g_spectrum = torch.view_as_real(torch.fft.rfft2(g_shaped))
    g_f = spectrum_gradient(g_spectrum, spectrum, stats, band, share, float(gamma), kernel_map)
    # g_x = sqrt(abar) grad + the unnormalised inverse of g_F (the 1/N was taken in g_Y / N).
    g_x = torch.fft.irfft2(torch.view_as_complex(g_f), s=(h, w), norm="forward")
    return g_x.add_(grad, alpha=float(coef.signal)), g_noise


def launch_mani_noise_cluster(x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map,
                              normalize):  # fmt: skip
    """256x256 planes in one launch of clusters (``takes_cluster_path``). Same contract as
    ``launch_mani_noise``."""
    coef = noise_coefficients(t)
    launch = (
        torch.ops.manipure_aot.mani_noise_cluster if active_loader() == "aot" else _jit_mani_noise_cluster
    )
    band, share = half_spectrum_bands(CLUSTER_SIDE, CLUSTER_SIDE, n_bands, band_mode, x.device)
    return launch(
        x, noise, rng_state, fft_steps(16, x.device), band, share, n_bands, float(gamma), float(eps0),
        weight_map == "kernel", NORMALIZE_CODES[normalize], float(coef.signal), float(coef.noise),
    )  # fmt: skip


def launch_mani_noise(x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map, normalize):
    """One launch over all B*C planes up to 64x64 and (with clusters) at 256x256, the large-plane
    path otherwise; returns (x_t, the noise drawn or an empty tensor)."""
    if takes_cluster_path(x):
        return launch_mani_noise_cluster(
            x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map, normalize
        )
    if _is_large(x):
        return launch_mani_noise_large(
            x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map, normalize
        )
    _, _, h, w = x.shape
    coef = noise_coefficients(t)
    launch = torch.ops.manipure_aot.mani_noise if active_loader() == "aot" else _jit_mani_noise
    return launch(
        x, noise, rng_state, *_mani_tables(x, n_bands, band_mode), float(gamma), float(eps0),
        weight_map == "kernel", NORMALIZE_CODES[normalize], float(coef.signal), float(coef.noise),
        mani_shared_bytes(h, w, n_bands),
    )  # fmt: skip


def launch_mani_noise_cluster_backward(grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map,
                                       normalize, detach_map, noise_grad):  # fmt: skip
    """The cluster path's backward, one launch (``takes_cluster_path``). Same contract as
    ``launch_mani_noise_backward``."""
    coef = noise_coefficients(t)
    if detach_map and not noise_grad:  # the map's value is not needed: nothing to recompute
        return grad * float(coef.signal), grad.new_empty(0)
    aot = active_loader() == "aot"
    launch = torch.ops.manipure_aot.mani_noise_cluster_backward if aot else _jit_mani_noise_cluster_backward
    band, share = half_spectrum_bands(CLUSTER_SIDE, CLUSTER_SIDE, n_bands, band_mode, x.device)
    return launch(
        grad, x, noise, fft_steps(16, x.device), band, share, n_bands, float(gamma), float(eps0),
        weight_map == "kernel", NORMALIZE_CODES[normalize], float(coef.signal), float(coef.noise),
        bool(detach_map), bool(noise_grad),
    )  # fmt: skip


def _jit_mani_noise_backward(grad, x, noise, cos_h, sin_h, cos_w, sin_w, band_map, band_counts, gamma, eps0,
                             weight_kernel, normalize, signal, noise_scale, detach_map, noise_grad,
                             shared_bytes):  # fmt: skip
    """The JIT loader's launch, in the call shape of ``manipure_aot::mani_noise_backward``."""
    b, c, h, w = x.shape
    g_x = torch.empty_like(x)
    g_noise = torch.empty_like(x) if noise_grad else x.new_empty(0)
    args = (
        grad, x, noise, g_x, g_noise if noise_grad else g_x, cos_h, sin_h, cos_w, sin_w, band_map,
        band_counts, _i32(h), _i32(w), _i32(band_counts.numel()), _f32(gamma), _f32(eps0),
        _i32(weight_kernel), _i32(normalize), _f32(signal), _f32(noise_scale), _i32(detach_map),
        _i32(noise_grad),
    )  # fmt: skip
    _launch("mani_noise_backward.cu", "mani_noise_backward_kernel", x.device, b * c, args, shared_bytes)
    return g_x, g_noise


def launch_mani_noise_backward(grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map, normalize,
                               detach_map, noise_grad):  # fmt: skip
    """The gradients for x and (when ``noise_grad``) the noise, one launch over planes up to 64x64,
    the cluster path's or the large-plane path's backward above; returns (g_x, g_noise or an empty
    tensor)."""
    if takes_cluster_path(x):
        return launch_mani_noise_cluster_backward(
            grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map, normalize, detach_map, noise_grad
        )
    if _is_large(x):
        return launch_mani_noise_large_backward(
            grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map, normalize, detach_map, noise_grad
        )
    _, _, h, w = x.shape
    coef = noise_coefficients(t)
    aot = active_loader() == "aot"
    launch = torch.ops.manipure_aot.mani_noise_backward if aot else _jit_mani_noise_backward
    return launch(
        grad, x, noise, *_mani_tables(x, n_bands, band_mode), float(gamma), float(eps0),
        weight_map == "kernel", NORMALIZE_CODES[normalize], float(coef.signal), float(coef.noise),
        bool(detach_map), bool(noise_grad), mani_backward_shared_bytes(h, w, n_bands),
    )  # fmt: skip


@torch.library.custom_op("manipure::mani_noise_cuda", mutates_args=(), device_types="cuda")
def mani_noise_cuda(
    x: torch.Tensor,
    noise: torch.Tensor | None,
    rng_state: torch.Tensor | None,
    t: int,
    n_bands: int,
    gamma: float,
    eps0: float,
    band_mode: str,
    weight_map: str,
    normalize: str,
    detach_map: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.mani_noise`` in one CUDA launch; returns (x_t, drawn noise or an empty tensor)."""
    return launch_mani_noise(x, noise, rng_state, t, n_bands, gamma, eps0, band_mode, weight_map, normalize)


@mani_noise_cuda.register_fake
def _(x, noise, rng_state, t, *args):
    return torch.empty_like(x), (torch.empty_like(x) if noise is None else x.new_empty(0))


def _mani_setup(ctx, inputs, output):
    x, noise, _rng, t, n_bands, gamma, eps0, band_mode, weight_map, normalize, detach_map = inputs
    ctx.save_for_backward(x, noise if noise is not None else output[1])
    ctx.options = dict(
        t=t, n_bands=n_bands, gamma=gamma, eps0=eps0, band_mode=band_mode, weight_map=weight_map,
        normalize=normalize, detach_map=detach_map,
    )  # fmt: skip
    ctx.has_noise = noise is not None


@torch.library.custom_op("manipure::mani_noise_backward_cuda", mutates_args=(), device_types="cuda")
def mani_noise_backward_cuda(
    grad: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    t: int,
    n_bands: int,
    gamma: float,
    eps0: float,
    band_mode: str,
    weight_map: str,
    normalize: str,
    detach_map: bool,
    noise_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused backward of ``mani_noise_cuda``: (g_x, g_noise or an empty tensor)."""
    return launch_mani_noise_backward(
        grad, x, noise, t, n_bands, gamma, eps0, band_mode, weight_map, normalize, detach_map, noise_grad
    )


@mani_noise_backward_cuda.register_fake
def _(grad, x, noise, *args):
    noise_grad = args[-1]
    return torch.empty_like(x), (torch.empty_like(x) if noise_grad else x.new_empty(0))


def _mani_backward(ctx, grad, _grad_drawn):
    x, noise = ctx.saved_tensors
    o = ctx.options
    noise_grad = ctx.has_noise and ctx.needs_input_grad[1]
    g_x, g_noise = mani_noise_backward_cuda(
        grad.contiguous(), x, noise, o["t"], o["n_bands"], o["gamma"], o["eps0"], o["band_mode"],
        o["weight_map"], o["normalize"], o["detach_map"], noise_grad,
    )  # fmt: skip
    return g_x, (g_noise if noise_grad else None), None, None, None, None, None, None, None, None, None


mani_noise_cuda.register_autograd(_mani_backward, setup_context=_mani_setup)


def _advance(rng_state: torch.Tensor | None, like: torch.Tensor) -> None:
    if rng_state is not None:
        rng_state[1].add_(like.numel())  # on the device: graph-safe, replays draw fresh noise


def exchange_update(x_t, eps, ref_t, eps_ref, noise, rng_state, coefficients, amplitude_cut_range,
                    phase_cut_range, phase_project, reconstruct_real) -> torch.Tensor:  # fmt: skip
    """The op plus the device-side offset advance (what ``ops.exchange_update`` calls)."""
    out = exchange_update_cuda(
        x_t, eps, ref_t, eps_ref, noise, rng_state if noise is None else None, coefficients,
        amplitude_cut_range, phase_cut_range, phase_project, reconstruct_real,
    )  # fmt: skip
    _advance(rng_state if noise is None else None, x_t)
    return out


def mani_noise(x, noise, rng_state, t, **options) -> torch.Tensor:
    """The op plus the device-side offset advance (what ``ops.mani_noise`` calls)."""
    out, _ = mani_noise_cuda(x, noise, rng_state if noise is None else None, t, **options)
    _advance(rng_state if noise is None else None, x)
    return out
