"""The CUDA C++ kernels (kernels/cuda): every source compiles for sm_90 with nvcc (CI has nvcc and
no GPU), and the backend is explicit-only and refuses clearly where it cannot run. Then, through
each loader (the ahead-of-time library and the CuPy JIT): forward against the reference, in-kernel
Philox noise, gradients, the sampler, torch.library's opcheck, and the library against the JIT.

These run on a GPU when there is one (through the loaders that are available, on larger shapes,
plus parity with the triton ops and graph replay). Without one they run on the CPU: the kernels'
own source and both loaders' launch code, compiled by g++ against tests/cuda_on_cpu's runtime,
which also checks memory bounds, unwritten outputs and barriers, and runs the threads in reverse
order to expose races. The library's device build itself is tested in test_cuda_library.py."""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from types import SimpleNamespace

import cuda_on_cpu
import numpy
import pytest
import torch
from conftest import LinearEps, weight_off_the_clip_bounds
from cuda_on_cpu import aot

from bench import bench_ops, sanitize_ops, tune_cuda
from manipure_fast import PurifierConfig, RecordedNoise, Round, ops
from manipure_fast import reference as ref
from manipure_fast.ops import cuda_ops, registry
from manipure_fast.ops.dft_tables import nyquist_in_band
from manipure_fast.reference.schedule import noise_coefficients, step_coefficients
from manipure_fast.sampler import purify_diffusion

# what the JIT compiles
KERNEL_FILES = (
    "exchange_update.cu",
    "exchange_update_backward.cu",
    "exchange_update_cluster.cu",
    "exchange_update_cluster_backward.cu",
    "mani_noise.cu",
    "mani_noise_backward.cu",
    "mani_noise_cluster.cu",
    "mani_noise_cluster_backward.cu",
    "mani_noise_large.cu",
    "mani_noise_large_backward.cu",
)
SOURCES = sorted(cuda_ops.cuda_source_dir().glob("*.cu"))


def test_there_are_cuda_sources():
    assert {p.name for p in SOURCES} == {*KERNEL_FILES, "launchers.cu"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_sources_compile_for_sm90(source, tmp_path):
    """The file as nvcc/CMake sees it, and as NVRTC sees it (header inlined), compile cleanly, and
    ptxas spills no register of any kernel (`-Xptxas -v`; docs/kernels.md has the counts)."""
    variants = [(source, [f"-I{source.parent}"])]
    if source.name in KERNEL_FILES:
        inlined = tmp_path / source.name
        inlined.write_text(cuda_ops.kernel_source(source.name))
        variants.append((inlined, []))
    for path, include in variants:
        result = subprocess.run(
            ["nvcc", "-arch=sm_90", "-std=c++17", "-Werror=all-warnings", "-Xptxas", "-v", *include, "-c",
             str(path), "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        _assert_no_spills(result.stderr)


def _assert_no_spills(ptxas_log: str) -> None:
    """ptxas's ``-v`` report is there, and no kernel in it spills."""
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    assert spills, ptxas_log  # the report is there to read
    assert all(stores == loads == "0" for stores, loads in spills), ptxas_log


@pytest.mark.parametrize("file", KERNEL_FILES)
def test_sources_compile_with_nvrtc_as_the_jit_passes_them(file):
    """What the JIT loader hands CuPy (headers inlined, ``cuda_ops.NVRTC_OPTIONS``), compiled by
    NVRTC itself with the options CuPy adds (-ftz=true and the architecture: compute_90 gives PTX,
    sm_90 a cubin, as CuPy versions differ): it compiles without a warning, every kernel of the
    file is an entry point by its plain name (``get_function`` looks it up so: they are
    ``extern "C"``), and ptxas spills nothing."""
    from cuda_on_cpu import nvrtc

    library = nvrtc.find_library()
    if library is None:
        pytest.skip("no libnvrtc (the test extras install nvidia-cuda-nvrtc)")
    source = cuda_ops.kernel_source(file)
    options = (*cuda_ops.NVRTC_OPTIONS, "-ftz=true")
    virtual = nvrtc.compile_source(library, source, file, (*options, "-arch=compute_90"))
    assert virtual.ok and "warning" not in virtual.log, virtual.log
    kernels = list(cuda_on_cpu.cluster_blocks(source))  # the kernels' names
    assert kernels and all(re.search(rf"\.entry {k}\(", virtual.ptx) for k in kernels), kernels
    real = nvrtc.compile_source(library, source, file, (*options, "-arch=sm_90", "-Xptxas=-v"))
    assert real.ok and "warning" not in real.log, real.log
    _assert_no_spills(real.log)


def test_cuda_backend_is_explicit_only_and_named_when_unavailable():
    x = torch.zeros(1, 1, 32, 32)
    assert ops.select_backend("exchange_update", x) != "cuda"
    with pytest.raises(ValueError, match="cuda"):
        ops.select_backend("exchange_update", x, "cuda")
    assert "CUDA devices" in ops.unsupported_reason("cuda", "mani_noise", x)


def test_shared_memory_budget_covers_the_presets():
    # CIFAR 32x32 and ImageNet 256x256 at the presets' cut radii fit one block's shared memory.
    assert cuda_ops.exchange_shared_bytes(32, 32, 10) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.exchange_shared_bytes(256, 256, 10) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.exchange_backward_shared_bytes(256, 256, 10) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.mani_shared_bytes(64, 64, 8) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.mani_backward_shared_bytes(64, 64, 8) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.exchange_cluster_shared_bytes(256, 256, 10) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.exchange_cluster_backward_shared_bytes(256, 256, 10) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.mani_cluster_shared_bytes(16) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.mani_cluster_backward_shared_bytes(16) <= cuda_ops.MAX_SHARED_BYTES
    assert cuda_ops.MANI_MAX_SIDE == 64  # larger MANI planes take cuFFT and mani_noise_large.cu
    assert cuda_ops.exchange_shared_bytes(256, 256, 200) > cuda_ops.MAX_SHARED_BYTES  # refused at launch


@pytest.mark.parametrize("n", [1, 2, 5, 28, 31, 64])
def test_full_dft_tables_are_symmetric_bit_for_bit(n):
    # The MANI kernels read the twiddle of (k, w) at [w][k], so that a warp's reads are coalesced.
    from manipure_fast.ops.dft_tables import full_tables

    for table in full_tables(n, n, torch.device("cpu")):
        assert torch.equal(table, table.T)


@pytest.mark.parametrize("n, cut", [(1, 3.0), (12, 10.0), (40, 20.0), (45, 5.0), (64, 12.0), (256, 10.0)])
def test_band_tables_are_conjugate_symmetric_bit_for_bit(n, cut):
    """The exchange kernels' row transforms take column K - j from column j (sin negated):
    dft_tables.band_tables lists the band in FFT order with exactly mirrored twiddles."""
    from manipure_fast.ops.dft_tables import band_frequencies, band_tables

    freqs = band_frequencies(n, cut)
    k = freqs.numel()
    cos, sin = band_tables(n, cut, k, n, torch.device("cpu"))
    mirror = (k - torch.arange(k)) % k
    assert torch.equal(torch.remainder(freqs + freqs[mirror], n), torch.zeros_like(freqs))
    assert torch.equal(cos, cos[mirror]) and torch.equal(sin, -sin[mirror])
    angle = freqs.double().view(-1, 1) * torch.arange(n, dtype=torch.float64) * (2 * torch.pi / n)
    assert (cos.double() - angle.cos()).abs().max() < 6e-8 and (sin.double() - angle.sin()).abs().max() < 6e-8


def _exchange_cases(planes_and_cuts, seed):
    """Per (shape, cut): six random planes (x_t, eps, ref_t, eps_ref, z, the output gradient), in
    "replace"/"abs" and in "project"/"real", as the launchers' options."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for shape, cut in planes_and_cuts:
        planes = [torch.randn(shape, generator=gen) * 0.6 for _ in range(6)]
        cases += [(planes, (cut, cut - 2, project, project)) for project in (False, True)]
    return cases


def _launch_exchange_cases(cases):
    """Every case's forward and its four gradients, through the launchers."""
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    outputs = []
    for (x_t, eps, ref_t, eps_ref, z, g), options in cases:
        outputs.append(
            cuda_ops.launch_exchange_update(x_t, eps, ref_t, eps_ref, z, None, coefficients, *options)
        )
        outputs += cuda_ops.launch_exchange_update_backward(
            g, x_t, eps, ref_t, eps_ref, coefficients, *options
        )
    return outputs


# The FMA loops' planes: one block (odd and even K, a full band with a Nyquist column), and the
# cluster kernels'.
FMA_PATH_CASES = (
    ((1, 2, 40, 36), 10.0),
    ((1, 1, 40, 40), 20.0),
    ((1, 1, 37, 45), 5.0),
    ((1, 1, 256, 256), 10.0),
)


def test_mirrored_band_columns_give_the_bits_of_summing_every_column(monkeypatch):
    """band_row_transforms sums columns 0..K/2 and stores the rest from their mirrors; compiled to
    sum every column (MANIPURE_SUM_EVERY_BAND_COLUMN=1), the exchange kernels give the same bits,
    forward and backward, on the FMA path's planes (one block, odd and even K, a full band) and
    on the cluster kernels'. The column and inverse transforms' pairing of theta and -theta agrees
    with the unpaired loops (MANIPURE_UNPAIRED_FREQUENCIES=1) to rounding."""
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    cases = _exchange_cases(FMA_PATH_CASES, seed=4)
    shipped = _launch_exchange_cases(cases)
    with tune_cuda.compiled_with({"MANIPURE_SUM_EVERY_BAND_COLUMN": 1}):
        every_column = _launch_exchange_cases(cases)
    assert all(torch.equal(a, b) for a, b in zip(shipped, every_column, strict=True))
    # The column and inverse transforms' pairing is other arithmetic: the same to rounding.
    with tune_cuda.compiled_with({"MANIPURE_UNPAIRED_FREQUENCIES": 1}):
        unpaired = _launch_exchange_cases(cases)
    for a, b in zip(shipped, unpaired, strict=True):
        if a.numel():
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * float(b.abs().max()))
            assert not torch.equal(a, b)


TENSOR_CORE_CASES = (((1, 2, 28, 28), 10.0), ((1, 1, 32, 32), 10.0), ((1, 1, 16, 16), 10.0))


def _holds_nyquist_tie(planes, options) -> bool:
    """Whether a case's band holds a Nyquist frequency (a full band on an even side)."""
    cut = max(options[:2])
    return any(nyquist_in_band(n, cut) for n in planes[0].shape[-2:])


def test_re_y_alone_agrees_with_complex_y_where_it_suffices(monkeypatch):
    """The exchange kernels take Re y alone where it suffices (real_part_of_y_suffices): every
    case here but the full bands with a Nyquist column (40x40, 16x16) in "abs". Against y complex
    everywhere (MANIPURE_ALWAYS_COMPLEX_Y=1), forward and backward, on the FMA loops' planes and
    the tensor-core path's (28x28, 32x32): "abs" drops Im y, which is rounding, so the same to
    rounding; on the FMA loops "real" never reads Im y, and its g_y's is exactly 0, so the same
    values. (The tensor-core path also holds half the W band where Re y suffices, which is other
    arithmetic: the same to rounding there.)"""
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    cases = _exchange_cases(FMA_PATH_CASES + TENSOR_CORE_CASES, seed=5)
    shipped = _launch_exchange_cases(cases)
    with tune_cuda.compiled_with({"MANIPURE_ALWAYS_COMPLEX_Y": 1}):
        complex_y = _launch_exchange_cases(cases)
    for index, (planes, options) in enumerate(cases):
        outputs = list(zip(shipped[5 * index : 5 * index + 5], complex_y[5 * index : 5 * index + 5]))
        fma_loops = max(planes[0].shape[-2:]) > cuda_ops.TENSOR_CORE_SIDE
        for a, b in outputs:
            if options[3] and fma_loops:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * float(b.abs().max()) if b.numel() else 0)
        # Per "abs" case, its five outputs: those that take Re y alone differ in some bits.
        if not options[3]:
            assert all(torch.equal(a, b) for a, b in outputs) == _holds_nyquist_tie(planes, options), planes[
                0
            ].shape


def test_half_w_band_on_the_tensor_cores_agrees_with_the_whole_band(monkeypatch):
    """The tensor-core path holds the W band's non-negative half where Delta is Hermitian
    (exchange_tensor_core.cuh). Against the whole band (MANIPURE_WHOLE_W_BAND=1), forward
    and backward: the same to rounding and not the same bits where it holds the half, the same bits
    elsewhere (the FMA loops' planes; the 16x16 full band, whose Nyquist keeps the whole band)."""
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    cases = _exchange_cases(TENSOR_CORE_CASES + FMA_PATH_CASES[:1], seed=6)
    shipped = _launch_exchange_cases(cases)
    with tune_cuda.compiled_with({"MANIPURE_WHOLE_W_BAND": 1}):
        whole_band = _launch_exchange_cases(cases)
    for index, (planes, options) in enumerate(cases):
        outputs = list(zip(shipped[5 * index : 5 * index + 5], whole_band[5 * index : 5 * index + 5]))
        for a, b in outputs:
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * float(b.abs().max()) if b.numel() else 0)
        half = max(planes[0].shape[-2:]) <= cuda_ops.TENSOR_CORE_SIDE and not _holds_nyquist_tie(
            planes, options
        )
        assert all(torch.equal(a, b) for a, b in outputs) != half, (planes[0].shape, options)


def test_gpus_without_tf32_tensor_cores_are_refused_by_name():
    """The kernels carry TF32 mma.sync (the tensor-core path), which sm_80 added."""
    assert cuda_ops.capability_unsupported_reason((8, 0)) is None
    assert cuda_ops.capability_unsupported_reason((9, 0)) is None
    reason = cuda_ops.capability_unsupported_reason((7, 5))
    assert reason is not None and "compute capability 8.0 or newer; this GPU has 7.5" in reason


def test_exchange_planes_wider_than_the_kernels_rows_are_refused_by_name():
    # The exchange kernels hold a row in a warp's registers; the backend's plane limit fits that.
    assert registry.CUDA_MAX_SIDE["exchange_update"] <= cuda_ops.EXCHANGE_MAX_WIDTH
    x = torch.zeros(1, 1, 4, cuda_ops.EXCHANGE_MAX_WIDTH + 1)
    with pytest.raises(ValueError, match="up to 256 pixels wide, got 4x257"):
        cuda_ops.launch_exchange_update(x, x, x, None, x, None, [1.0] * 8, 1.0, 1.0, False, False)


def test_loader_selection_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MANIPURE_CUDA_LOADER", "nvrtc")
    with pytest.raises(ValueError, match="MANIPURE_CUDA_LOADER"):
        cuda_ops.requested_loader()
    monkeypatch.setenv("MANIPURE_CUDA_LOADER", "jit")
    assert cuda_ops.active_loader() == "jit"


# ---- through each loader: on the GPU, or on the CPU runtime ------------------------------------

ON_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="no CUDA device")
CUSTOM_OPS = (
    cuda_ops.mani_noise_cuda,
    cuda_ops.mani_noise_backward_cuda,
    cuda_ops.exchange_update_cuda,
    cuda_ops.exchange_update_backward_cuda,
)


def _refuse_cpu_tensors(*args, **kwargs):
    raise RuntimeError("the manipure cuda ops take CUDA tensors (CPU ones only under tests/cuda_on_cpu)")


for _op in CUSTOM_OPS:
    _op.register_kernel("cpu", _refuse_cpu_tensors)


@dataclass(frozen=True)
class Loader:
    name: str
    device: str


def _no_jit_launch(*args, **kwargs):
    raise AssertionError("a JIT launch under the aot loader")


def _run_on_the_cpu(monkeypatch, name: str) -> None:
    """backend="cuda" on CPU tensors through the CPU runtime: "jit" sends the JIT loader's launches
    there; "aot" stands the library's own sources, built for the CPU (cuda_on_cpu.aot), in for the
    library. The custom ops run their own bodies (the CPU kernel registered above, disabled, by the
    caller) instead of refusing."""
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "active_loader", lambda: name)
    if name == "aot":
        monkeypatch.setattr(torch.ops, "manipure_aot", aot.load(), raising=False)
        monkeypatch.setattr(cuda_ops, "_launch", _no_jit_launch)
    else:
        monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    device_check = registry.unsupported_reason

    def cuda_runs_on_the_cpu(backend, op, x, n_bands=None):
        if backend != "cuda":
            return device_check(backend, op, x, n_bands)
        return registry.options_unsupported_reason(backend, op, n_bands)  # past the device checks

    monkeypatch.setattr(registry, "unsupported_reason", cuda_runs_on_the_cpu)
    monkeypatch.setattr(ops, "unsupported_reason", cuda_runs_on_the_cpu)  # the re-export


@pytest.fixture(params=cuda_ops.LOADERS)
def loader(request, monkeypatch):
    """Runs the test once per loader (the AOT library, the CuPy JIT): on the GPU, skipping one that
    is absent; else on the CPU runtime."""
    if ON_GPU:
        reason = cuda_ops.loader_unavailable_reason(request.param)
        if reason is not None:
            pytest.skip(reason)
        monkeypatch.setenv("MANIPURE_CUDA_LOADER", request.param)
        yield Loader(request.param, "cuda")
        return
    _run_on_the_cpu(monkeypatch, request.param)
    with contextlib.ExitStack() as stack:
        for op in CUSTOM_OPS:
            stack.enter_context(op.set_kernel_enabled("cpu", False))
        yield Loader(request.param, "cpu")


def _on(device, *tensors):
    return tuple(t.to(device) for t in tensors)


# Awkward planes for every run (odd, thin, square, batched; each MANI path), and on the GPU the
# shapes of the Triton issue (31x33, 28x28, 32x32, 64x64, 256x256; C in {1, 3}; B in {1, 7, 64}).
# Planes up to 32x32 take the kernels' tensor-core path: 32x32 fills its tiles, smaller ones pad them.
MANI_SHAPES = [
    (1, 1, 31, 33), (2, 3, 16, 20), (2, 3, 32, 32), (1, 1, 64, 64),
    (2, 1, 3, 64), (1, 1, 64, 1), (1, 2, 67, 65), (1, 2, 256, 256),
]  # fmt: skip
EXCHANGE_SHAPES = [
    (1, 3, 31, 33),
    (2, 1, 28, 28),
    (2, 3, 32, 32),
    (1, 1, 64, 64),
    (2, 1, 5, 7),
    (1, 1, 1, 40),
    (1, 1, 256, 256),
]
if ON_GPU:
    ISSUE_SHAPES = [
        (b, c, h, w) for (h, w) in ((31, 33), (28, 28), (32, 32), (64, 64)) for c in (1, 3) for b in (1, 7)
    ]
    ISSUE_SHAPES += [(64, 3, 32, 32), (1, 3, 256, 256), (7, 1, 256, 256), (64, 3, 256, 256)]
    MANI_SHAPES += ISSUE_SHAPES
    EXCHANGE_SHAPES += ISSUE_SHAPES


def _ids(shape):
    return "x".join(map(str, shape))


def _bound(out, exact, eager, atol=1e-5):
    err = (out.double() - exact).abs().max()
    bound = 2 * (eager.double() - exact).abs().max() + atol
    assert err <= bound, f"max err {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", MANI_SHAPES, ids=_ids)
def test_mani_noise_matches_reference(shape, dtype, loader):
    gen = torch.Generator().manual_seed(sum(shape))
    x, z = _on(
        loader.device, (torch.rand(shape, generator=gen) * 2 - 1).to(dtype), torch.randn(shape, generator=gen)
    )
    out = ops.mani_noise(x, 300, z, backend="cuda")
    _bound(out, ref.mani_noise(x.double(), 300, z.double()), ref.mani_noise(x.float(), 300, z))
    if ON_GPU:
        torch.testing.assert_close(out, ops.mani_noise(x, 300, z, backend="triton"), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(band_mode="count"),
        dict(weight_map="kernel"),
        dict(normalize="max"),
        dict(normalize="none", n_bands=3),
    ],
    ids=["count", "kernel", "max", "none-3-bands"],
)
@pytest.mark.parametrize(
    "shape", [(2, 3, 20, 24), (1, 2, 72, 81), (1, 2, 256, 256)], ids=["one-block", "large", "cluster"]
)
def test_mani_noise_options(options, shape, loader):
    (x,) = _on(loader.device, torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    z = torch.randn_like(x)
    out = ops.mani_noise(x, 700, z, backend="cuda", **options)
    _bound(out, ref.mani_noise(x.double(), 700, z.double(), **options), ref.mani_noise(x, 700, z, **options))


def _record_launches(loader, monkeypatch) -> list[str]:
    """The names of the kernels the JIT loader launches from now on (none recorded for the AOT
    library, which launches from C++)."""
    launched = []
    if loader.name == "jit":
        launch = cuda_ops._launch
        monkeypatch.setattr(
            cuda_ops, "_launch", lambda file, name, *a: launched.append(name) or launch(file, name, *a)
        )
    return launched


@pytest.mark.parametrize("normalize", ["rms", "max"])
def test_256_planes_take_one_cluster_launch_and_agree_with_the_large_plane_path(
    normalize, loader, monkeypatch
):
    """At 256x256 the forward is mani_noise_cluster.cu's one launch, and the backward
    mani_noise_cluster_backward.cu's; the large-plane path (MANI_CLUSTER off: four launches, and
    eight for the backward) computes the same, both against fp64."""
    launched = _record_launches(loader, monkeypatch)
    gen = torch.Generator().manual_seed(5)
    x, z, weight = _on(
        loader.device, torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1, *torch.randn(2, 1, 3, 256, 256)
    )
    x.requires_grad_()

    def run():
        out = ops.mani_noise(x, 600, z, backend="cuda", normalize=normalize)
        return out.detach(), torch.autograd.grad((out * weight).sum(), x)[0]

    assert cuda_ops.takes_cluster_path(x)
    cluster, cluster_grad = run()
    if loader.name == "jit":
        assert launched == ["mani_noise_cluster_kernel", "mani_noise_cluster_backward_kernel"]
    monkeypatch.setattr(cuda_ops, "MANI_CLUSTER", False)
    assert not cuda_ops.takes_cluster_path(x)
    large, large_grad = run()
    exact = ref.mani_noise(x.detach().double(), 600, z.double(), normalize=normalize)
    eager = ref.mani_noise(x.detach(), 600, z, normalize=normalize)
    _bound(cluster, exact, eager)
    _bound(large, exact, eager)
    assert not torch.equal(cluster, large)  # two computations, which differ by rounding
    # Each path's gradient is checked against fp64 in test_mani_backward_matches_autograd; here,
    # that the two agree.
    torch.testing.assert_close(cluster_grad, large_grad, rtol=1e-5, atol=1e-4)


def test_cluster_path_needs_a_gpu_with_clusters(monkeypatch):
    assert not cuda_ops.on_cluster_plane(torch.zeros(1, 1, 256, 255))
    assert not cuda_ops.on_cluster_plane(torch.zeros(1, 1, 128, 128))
    assert cuda_ops.takes_cluster_path(torch.zeros(2, 3, 256, 256))
    assert cuda_ops.takes_exchange_cluster_path(torch.zeros(2, 3, 256, 256))
    x = SimpleNamespace(shape=(1, 1, 256, 256), device=torch.device("cuda"))  # what it reads
    for capability, expected in (((8, 0), False), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert cuda_ops.takes_cluster_path(x) is expected


MODES = [("replace", "abs"), ("project", "real")]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
def test_256_planes_take_one_cluster_launch_for_the_exchange_too(mode, loader, monkeypatch):
    """exchange_update at 256x256 is exchange_update_cluster.cu's launch (eight blocks per plane,
    the band spectra summed across the cluster); the one-block kernel (EXCHANGE_CLUSTER off)
    agrees, with and without eps_ref and with Philox noise, and both are within the fp64 bound."""
    launched = _record_launches(loader, monkeypatch)
    gen = torch.Generator().manual_seed(9)
    x_t, eps, ref_t, eps_ref, z = _on(
        loader.device, *(torch.randn(1, 2, 256, 256, generator=gen) for _ in range(5))
    )
    step = step_coefficients(300, 280, eta=1.0)
    options = dict(step=step, phase_mode=mode[0], reconstruct=mode[1], backend="cuda")

    def run():
        given = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, **options)
        rng = torch.tensor([3, 7], device=x_t.device)
        drawn = ops.exchange_update(x_t, eps, ref_t, None, rng_state=rng, **options)
        return given, drawn

    assert cuda_ops.takes_exchange_cluster_path(x_t)
    cluster = run()
    if loader.name == "jit":
        assert launched == ["exchange_update_cluster_kernel"] * 2
    monkeypatch.setattr(cuda_ops, "EXCHANGE_CLUSTER", False)
    one_block = run()
    for a, b in zip(cluster, one_block):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    reference = dict(options, backend="reference")
    exact = ops.exchange_update(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)), **reference)
    _bound(cluster[0], exact, ops.exchange_update(x_t, eps, ref_t, eps_ref, z, **reference))


@pytest.mark.parametrize(
    "mode, with_eps_ref",
    [(MODES[0], True), (MODES[1], False)],
    ids=["replace-abs", "project-real-no-eps-ref"],
)
def test_256_planes_take_one_cluster_launch_for_the_exchange_backward(
    mode, with_eps_ref, loader, monkeypatch
):
    """exchange_update's backward at 256x256 is exchange_update_cluster_backward.cu's launch (eight
    blocks per plane, the band spectra and g_Delta summed across the cluster); the one-block
    backward (EXCHANGE_CLUSTER off) gives the same gradients, up to the order of the sums."""
    launched = _record_launches(loader, monkeypatch)
    gen = torch.Generator().manual_seed(12)
    *inputs, weight, z = _on(loader.device, *(torch.randn(1, 2, 256, 256, generator=gen) for _ in range(6)))
    inputs = [t * 0.6 for t in inputs]
    if not with_eps_ref:
        inputs[3] = None
    options = dict(step=step_coefficients(300, 280, eta=1.0), phase_mode=mode[0], reconstruct=mode[1])
    weight = weight_off_the_clip_bounds(weight, [*inputs, z], options)

    def gradients():
        leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
        out = ops.exchange_update(*leaves, z, backend="cuda", **options)
        return torch.autograd.grad((out * weight).sum(), [t for t in leaves if t is not None])

    assert cuda_ops.takes_exchange_cluster_path(inputs[0])
    cluster = gradients()
    if loader.name == "jit":
        assert launched == ["exchange_update_cluster_kernel", "exchange_update_cluster_backward_kernel"]
    monkeypatch.setattr(cuda_ops, "EXCHANGE_CLUSTER", False)
    one_block = gradients()
    if loader.name == "jit":
        assert launched[2:] == ["exchange_update_kernel", "exchange_update_backward_kernel"]
    scale = max(float(g.abs().max()) for g in one_block)
    for a, b in zip(cluster, one_block):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", EXCHANGE_SHAPES, ids=_ids)
def test_exchange_update_matches_reference(shape, dtype, mode, loader):
    gen = torch.Generator().manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z = _on(loader.device, *(torch.randn(shape, generator=gen) for _ in range(5)))
    x_t, eps = x_t.to(dtype), eps.to(dtype)
    options = dict(step=step_coefficients(99, 89, eta=1.0), phase_mode=mode[0], reconstruct=mode[1])
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="cuda", **options)

    def reference(*tensors):
        return ops.exchange_update(*tensors, backend="reference", **options)

    exact = reference(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)))
    _bound(out, exact, reference(*(t.float() for t in (x_t, eps, ref_t, eps_ref, z))))
    if ON_GPU:
        triton = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="triton", **options)
        torch.testing.assert_close(out, triton, rtol=0, atol=1e-4)


@pytest.mark.parametrize("reconstruct", ["abs", "real"])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 20, 36)], ids=_ids)
def test_exchange_update_keeps_the_references_nyquist_ties_in_project_mode(shape, reconstruct, loader):
    """Where a band holds a Nyquist frequency, its coefficients are real in both spectra, and where
    their signs differ "project" rotates the reference's by -delta, so Delta is not Hermitian and
    "abs" keeps an imaginary part (docs/reference-differences.md). The kernels must reproduce it,
    forward and backward (whose g_y is complex there); "real" reads Re y alone even there.
    16x16 takes the tensor-core path, 20x36 the FMA loops (Nyquist on the H axis only)."""
    options = dict(step=step_coefficients(99, 89, eta=1.0), phase_mode="project", reconstruct=reconstruct)
    _assert_exchange_matches_reference_both_ways(shape, options, loader.device)


def _assert_exchange_matches_reference_both_ways(shape, options, device):
    """The cuda exchange's output within the eager bound of the reference's, and its gradients
    within _assert_gradients_close's, on random inputs of ``shape``."""
    gen = torch.Generator().manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z, weight = _on(device, *(torch.randn(shape, generator=gen) for _ in range(6)))
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="cuda", **options)

    def reference(*tensors):
        return ops.exchange_update(*tensors, backend="reference", **options)

    exact = reference(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)))
    _bound(out, exact, reference(x_t, eps, ref_t, eps_ref, z))

    inputs = [t * 0.6 for t in (x_t, eps, ref_t, eps_ref)]
    weight = weight_off_the_clip_bounds(weight, [*inputs, z], options)

    def gradients(backend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in inputs]
        out = ops.exchange_update(*leaves, z.to(dtype), backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), leaves)

    _assert_gradients_close(gradients)


@pytest.mark.parametrize(
    "options",
    [
        dict(delta=4.0, amplitude_cut_range=6, phase_cut_range=6),
        dict(delta=math.inf, reconstruct="real"),
        dict(amplitude_cut_range=math.inf, phase_cut_range=2),
    ],
    ids=["delta4", "delta-inf", "amp-cut-inf"],
)
@pytest.mark.parametrize("shape", [(1, 2, 12, 10), (1, 1, 11, 40)], ids=_ids)
def test_exchange_with_delta_past_pi_and_infinite_cuts(shape, options, loader):
    """In "project" mode a delta past pi clips nothing, and infinite cut ranges exchange every
    coefficient, as in the reference: forward and backward, on the tensor-core path (12x10) and
    the FMA loops (11x40)."""
    options = dict(step=step_coefficients(99, 89, eta=1.0), phase_mode="project", **options)
    _assert_exchange_matches_reference_both_ways(shape, options, loader.device)


@pytest.mark.parametrize(
    "shape", [(1, 1, 16, 16), (1, 1, 40, 40), (1, 1, 70, 70), (1, 1, 256, 256)], ids=_ids
)
def test_mani_noise_takes_up_to_1024_bands_on_every_path(shape, loader):
    """The tensor-core tile, the FMA plane, the large-plane path and the cluster (torch_library.cpp's
    check_bands takes up to MANI_MAX_BANDS; the JIT loader is held to the same limit)."""
    gen = torch.Generator().manual_seed(1)
    x, z = _on(loader.device, torch.rand(shape, generator=gen) * 2 - 1, torch.randn(shape, generator=gen))
    n_bands = cuda_ops.MANI_MAX_BANDS
    out = ops.mani_noise(x, 300, z, backend="cuda", n_bands=n_bands)
    exact = ref.mani_noise(x.double(), 300, z.double(), n_bands=n_bands)
    _bound(out, exact, ref.mani_noise(x, 300, z, n_bands=n_bands))


def test_mani_noise_refuses_more_bands_before_any_launch(loader, monkeypatch):
    """More than MANI_MAX_BANDS bands: the cuda backend names the limit before launching anything,
    through either loader, and "auto" passes the call on to the next backend."""
    x = torch.rand(1, 1, 70, 70, device=loader.device) * 2 - 1
    launched = []
    monkeypatch.setattr(cuda_ops, "_launch", lambda *args, **kwargs: launched.append(args))
    with pytest.raises(ValueError, match="cuda mani_noise takes up to 1024 bands, not 1025"):
        ops.mani_noise(x, 300, torch.randn_like(x), backend="cuda", n_bands=1025)
    assert not launched
    monkeypatch.setattr(registry, "auto_order", lambda *args, **kwargs: ("cuda", "reference"))
    assert registry.select_backend("mani_noise", x, "auto", n_bands=1025) == "reference"
    assert registry.select_backend("mani_noise", x, "auto", n_bands=1024) == "cuda"


@pytest.mark.parametrize("n_bands", [1, 8, 40])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 2), (3, 1, 1, 65), (1, 1, 65, 2)], ids=_ids)
def test_mani_noise_on_degenerate_planes(shape, n_bands, loader):
    """Single pixels and lines, on both MANI paths, with one band and with more bands than a
    line's frequencies fill."""
    gen = torch.Generator().manual_seed(sum(shape) + n_bands)
    x, z = _on(loader.device, torch.rand(shape, generator=gen) * 2 - 1, torch.randn(shape, generator=gen))
    out = ops.mani_noise(x, 300, z, backend="cuda", n_bands=n_bands)
    exact = ref.mani_noise(x.double(), 300, z.double(), n_bands=n_bands)
    _bound(out, exact, ref.mani_noise(x, 300, z, n_bands=n_bands))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
@pytest.mark.parametrize(
    "shape, cuts",
    [
        ((1, 1, 9, 40), (30, 30)),
        ((1, 1, 12, 20), (30, 30)),
        ((2, 1, 16, 16), (0, 0)),
        ((1, 1, 1, 1), (10, 10)),
        ((1, 1, 33, 1), (3, 3)),
    ],
    ids=["band-covers-every-frequency", "band-covers-every-frequency-tensor-cores", "dc-only", "1x1", "33x1"],
)
def test_exchange_update_on_degenerate_bands(shape, cuts, mode, loader):
    gen = torch.Generator().manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z = _on(loader.device, *(torch.randn(shape, generator=gen) for _ in range(5)))
    options = dict(step=step_coefficients(99, 89, eta=1.0), amplitude_cut_range=cuts[0],
                   phase_cut_range=cuts[1], phase_mode=mode[0], reconstruct=mode[1])  # fmt: skip
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="cuda", **options)
    tensors = (x_t, eps, ref_t, eps_ref, z)
    exact = ops.exchange_update(*(t.double() for t in tensors), backend="reference", **options)
    _bound(out, exact, ops.exchange_update(*tensors, backend="reference", **options))


def test_exchange_update_without_reference_model_call(loader):
    gen = torch.Generator().manual_seed(4)
    x_t, eps, ref_t, z = _on(loader.device, *(torch.randn(2, 3, 32, 32, generator=gen) for _ in range(4)))
    step = step_coefficients(29, 19, eta=0.0)
    out = ops.exchange_update(x_t, eps, ref_t, None, z, step=step, backend="cuda")
    expected = ops.exchange_update(x_t, eps, ref_t, None, z, step=step, backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


# ---- in-kernel noise ------------------------------------------------------------------------------


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC'11) on numpy uint64 arrays holding 32-bit words."""
    c = [numpy.asarray(v, dtype=numpy.uint64) for v in counter]
    k0, k1 = (numpy.asarray(v, dtype=numpy.uint64) for v in key)
    m0, m1, mask, shift = (numpy.uint64(v) for v in (0xD2511F53, 0xCD9E8D57, 0xFFFFFFFF, 32))
    for _ in range(10):
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [(p1 >> shift) ^ c[1] ^ k0, p1 & mask, (p0 >> shift) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + numpy.uint64(0x9E3779B9)) & mask, (k1 + numpy.uint64(0xBB67AE85)) & mask
    return c


def test_numpy_philox_matches_the_random123_known_answers():
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]  # fmt: skip
    for counter, key, expected in cases:
        assert tuple(int(v) for v in philox4x32_10(counter, key)) == expected


def expected_normals(seed: int, offset: int, count: int) -> numpy.ndarray:
    """What kernels/cuda/manipure_common.cuh's philox_normal draws for elements 0..count-1:
    Box-Muller on the first two words of Philox(counter = (index, offset), key = seed)."""
    index = numpy.arange(count, dtype=numpy.uint64)

    def words(v):
        return v & numpy.uint64(0xFFFFFFFF), v >> numpy.uint64(32)

    r = philox4x32_10((*words(index), *words(numpy.uint64(offset))), words(numpy.uint64(seed)))
    u1 = (r[0].astype(numpy.float64) + 1) * 2.0**-32
    u2 = r[1].astype(numpy.float64) * 2.0**-32
    return numpy.sqrt(-2 * numpy.log(u1)) * numpy.cos(2 * numpy.pi * u2)


@pytest.mark.parametrize(
    "seed, offset", [(1234, 0), (2**40 + 7, 3 * 2**33 + 5)], ids=["small", "64-bit-words"]
)
def test_in_kernel_noise_is_philox_box_muller(seed, offset, loader):
    """The MANI kernels' stored draws (one-block, large-plane, cluster) and the exchange kernel's noise
    (x_t = eps = 0 leaves x_next = c1 z) against Philox4x32-10 computed here."""
    for shape in ((2, 3, 12, 16), (1, 2, 72, 66), (1, 2, 256, 256)):
        x, rng = _on(loader.device, torch.rand(shape) * 2 - 1, torch.tensor([seed, offset]))
        _, drawn = cuda_ops.launch_mani_noise(x, None, rng, 500, 8, 1.8, 1e-6, "width", "spectral", "rms")
        expected = expected_normals(seed, offset, x.numel()).reshape(shape)
        numpy.testing.assert_allclose(drawn.cpu().numpy(), expected, rtol=1e-5, atol=2e-5)
    zeros, rng = _on(loader.device, torch.zeros(2, 3, 32, 32), torch.tensor([seed, offset]))
    step = step_coefficients(999, 989, eta=1.0)
    out = ops.exchange_update(zeros, zeros, zeros, None, step=step, rng_state=rng, backend="cuda")
    expected = expected_normals(seed, offset, zeros.numel()).reshape(zeros.shape)
    numpy.testing.assert_allclose(out.cpu().numpy() / step.c1, expected, rtol=1e-5, atol=2e-5)


def test_philox_noise_statistics_and_fresh_draws(loader):
    batch = 64 if ON_GPU else 16
    x, rng = _on(loader.device, torch.zeros(batch, 3, 32, 32), torch.tensor([1234, 0]))
    options = dict(rng_state=rng, backend="cuda", normalize="none", weight_map="kernel")
    first = ops.mani_noise(x, 999, **options)
    second = ops.mani_noise(x, 999, **options)
    assert int(rng[1]) == 2 * x.numel()
    assert not torch.equal(first, second)
    rng.copy_(torch.tensor([1234, 0]))
    torch.testing.assert_close(ops.mani_noise(x, 999, **options), first, rtol=0, atol=0)
    # exchange_update with x_t = eps = 0 and c1 = 1, c2 = 0 exposes its noise: mean 0, std 1
    step = step_coefficients(999, 989, eta=1.0)
    out = ops.exchange_update(x, x, x, None, step=step, rng_state=rng, backend="cuda")
    noise = (out - out.mean()) / step.c1
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.02
    planes = noise.view(-1, 32 * 32)
    assert abs(float(torch.corrcoef(planes[:2])[0, 1])) < 0.15


# ---- gradients --------------------------------------------------------------------------------------


def test_gradients_match_reference(loader):
    gen = torch.Generator().manual_seed(5)
    *inputs, z = _on(loader.device, *(torch.randn(2, 3, 16, 20, generator=gen) for _ in range(5)))
    step = step_coefficients(29, 19, eta=1.0)
    weight = torch.linspace(0, 1, z.numel(), device=z.device).view_as(z)
    grads = []
    for backend in ("cuda", "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = ops.exchange_update(
            *leaves, z, step=step, amplitude_cut_range=3, phase_cut_range=2, backend=backend
        )
        mani = ops.mani_noise(leaves[0], 400, z, backend=backend)
        grads.append(torch.autograd.grad((out * weight).sum() + (mani * weight).sum(), leaves))
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-4)


def _assert_gradients_close(gradients):
    """The cuda backend's fp32 gradients against fp64 autograd through the reference, within twice
    the fp32 reference's own error (plus 1e-5 of the largest gradient), as
    tests/test_triton_ops.py checks the Triton backward."""
    fused, exact, eager = (
        gradients("cuda", torch.float32),
        gradients("reference", torch.float64),
        gradients("reference", torch.float32),
    )
    scale = max(float(g.abs().max()) for g in exact)
    for g_fast, g_exact, g_eager in zip(fused, exact, eager):
        err = (g_fast.double() - g_exact).abs().max()
        assert err <= 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
@pytest.mark.parametrize(
    "shape, cuts, with_eps_ref",
    [
        ((1, 3, 31, 33), (10, 10), True),
        ((7, 1, 28, 28), (4, 7), False),
        ((2, 3, 32, 32), (10, 10), True),  # the tensor-core path's whole tile
        ((1, 2, 12, 20), (12, 9), True),  # the amplitude disc covers every frequency
        ((2, 3, 256, 256), (10, 10), True),
    ],
    ids=["31x33", "28x28-no-eps-ref", "32x32", "12x20-full-band", "256x256"],
)
def test_fused_exchange_backward_matches_autograd(shape, cuts, with_eps_ref, mode, loader):
    gen = torch.Generator().manual_seed(sum(shape))
    *inputs, weight, z = _on(loader.device, *(torch.randn(shape, generator=gen) for _ in range(6)))
    inputs = [t * 0.6 for t in inputs]
    if not with_eps_ref:
        inputs[3] = None
    options = dict(step=step_coefficients(199, 179, eta=1.0), amplitude_cut_range=cuts[0],
                   phase_cut_range=cuts[1], phase_mode=mode[0], reconstruct=mode[1])  # fmt: skip
    weight = weight_off_the_clip_bounds(weight, [*inputs, z], options)

    def gradients(backend, dtype):
        leaves = [None if t is None else t.to(dtype).requires_grad_() for t in inputs]
        out = ops.exchange_update(*leaves, z.to(dtype), backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), [t for t in leaves if t is not None])

    _assert_gradients_close(gradients)


@pytest.mark.parametrize(
    "shape, options",
    [
        ((1, 3, 31, 33), {}),
        ((2, 3, 32, 32), {}),  # the tensor-core path's tile, filled
        ((1, 2, 5, 7), dict(normalize="max")),
        ((7, 1, 28, 28), dict(band_mode="count", weight_map="kernel")),
        ((2, 3, 64, 64), dict(normalize="max")),
        ((2, 2, 16, 20), dict(normalize="none", n_bands=5, gamma=1.2)),
        ((1, 2, 12, 16), dict(detach_map=True)),
        # 256x256: the cluster kernel (mani_noise_cluster_backward.cu)
        ((2, 3, 256, 256), {}),
        ((1, 2, 256, 256), dict(weight_map="kernel", normalize="max")),
        ((1, 1, 256, 256), dict(band_mode="count", normalize="none", n_bands=3, gamma=1.2)),
        ((1, 2, 256, 256), dict(detach_map=True, n_bands=16)),
        # the large-plane path: cuFFT around mani_noise_large_backward.cu's kernels
        ((1, 1, 67, 65), dict(weight_map="kernel", normalize="max")),
        ((2, 1, 70, 68), dict(band_mode="count", normalize="none", n_bands=3, gamma=1.2)),
        ((1, 1, 72, 81), dict(n_bands=16)),
        ((1, 2, 66, 70), dict(detach_map=True)),
    ],
    ids=[
        "31x33",
        "32x32",
        "5x7-max",
        "28x28-count-kernel",
        "64x64-max",
        "16x20-none",
        "detached",
        "256x256",
        "256x256-kernel-max",
        "256x256-count-none",
        "256x256-detached-16bands",
        "67x65-kernel-max",
        "70x68-count-none",
        "72x81-16bands",
        "66x70-detached",
    ],
)
def test_mani_backward_matches_autograd(shape, options, loader):
    gen = torch.Generator().manual_seed(sum(shape))
    x0, z0, weight = _on(
        loader.device,
        torch.rand(shape, generator=gen) * 2 - 1,
        *(torch.randn(shape, generator=gen) for _ in range(2)),
    )

    def gradients(backend, dtype):
        x, z = x0.to(dtype).requires_grad_(), z0.to(dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), (x, z))

    _assert_gradients_close(gradients)


@pytest.mark.parametrize("normalize", ["rms", "max"])
@pytest.mark.parametrize("side", [20, 70, 256], ids=["one-block", "large", "cluster"])
def test_a_constant_plane_gets_the_unit_map_and_only_the_direct_gradient(side, normalize, loader):
    """A mid-grey plane has an all-zero spectrum, so |Y| = 0 everywhere: W = 1 (the all-zero map's
    rule), and torch's |.| and pow give the map no gradient."""
    x, z, weight = _on(loader.device, torch.zeros(1, 2, side, side), *torch.randn(2, 1, 2, side, side))
    x.requires_grad_()
    out = ops.mani_noise(x, 300, z, backend="cuda", normalize=normalize)
    (g,) = torch.autograd.grad(out, x, weight)
    coef = noise_coefficients(300)
    torch.testing.assert_close(out.detach(), coef.noise * z, rtol=0, atol=1e-6)
    torch.testing.assert_close(g, coef.signal * weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", [128, 256], ids=["large", "cluster"])
def test_a_constant_plane_ties_at_every_pixel_and_max_shares_the_gradient(side, loader):
    """A constant plane that is not mid-grey has only the DC coefficient, and power-of-two FFTs
    keep the rest exactly zero, so |Y| is the same at every pixel: all H*W pixels tie at the
    maximum. torch's amax shares the scale's gradient evenly between them; a kernel that counted
    one maximum (or none) would take the whole of it at every pixel (or drop it). With every pixel
    tied, that term moves only g_Y's mean, the DC, whose band weight 1 / (M^gamma + eps0) the
    default eps0 makes a millionth of the empty bands' (1 / eps0): eps0 = 1000 keeps the two
    comparable, so the term shows in the gradient."""
    shape = (1, 2, side, side)
    x0 = _on(loader.device, torch.full(shape, 0.37))[0]
    z0, weight = _on(loader.device, *torch.randn(2, *shape, generator=torch.Generator().manual_seed(side)))
    shaped = ref.intensity_map(x0.double(), normalize="none", eps0=1000.0)
    assert shaped.unique().numel() == 1  # the reference ties exactly too, so the test means what it says

    def gradients(backend, dtype):
        x, z = x0.to(dtype).requires_grad_(), z0.to(dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, normalize="max", eps0=1000.0)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), (x, z))

    _assert_gradients_close(gradients)


@pytest.mark.parametrize("side", [20, 70, 256], ids=["one-block", "large", "cluster"])
def test_detached_map_without_a_noise_gradient_gives_the_direct_term(side, loader):
    """mani_detach with noise that needs no gradient (the purifier's case): g_x = sqrt(abar) grad."""
    x, z, weight = _on(loader.device, torch.rand(1, 2, side, side) * 2 - 1, *torch.randn(2, 1, 2, side, side))
    x.requires_grad_()
    out = ops.mani_noise(x, 300, z, backend="cuda", detach_map=True)
    (g,) = torch.autograd.grad(out, x, weight)
    torch.testing.assert_close(g, noise_coefficients(300).signal * weight, rtol=0, atol=1e-6)


# ---- the sampler, graphs, the sanitizer's workload ----------------------------------------------------


@pytest.mark.parametrize(
    "mani, shape",
    [(True, (2, 3, 16, 16)), (False, (1, 1, 31, 33)), (True, (1, 2, 72, 66))],
    ids=["mani-B2-C3-16", "freqpure-B1-C1-31x33", "mani-large-72x66"],
)
def test_sampler_on_the_cuda_backend_equals_reference_given_the_same_noise(mani, shape, loader):
    torch.manual_seed(0)
    model = LinearEps(shape[1]).to(loader.device)
    config = PurifierConfig(
        rounds=(Round.from_total(40, 2), Round.from_total(20, 2)),
        mani=mani,
        amplitude_cut_range=4,
        phase_cut_range=3,
    )
    x, *noise = _on(loader.device, torch.rand(shape) * 2 - 1, *(torch.randn(shape) for _ in range(10)))
    with torch.no_grad():
        expected = ref.purify_diffusion(model, x, config, RecordedNoise(noise))
        fast = purify_diffusion(model, x, config, RecordedNoise(noise), backend="cuda")
    assert (fast - expected).abs().max() <= 1e-4


@gpu
@pytest.mark.parametrize("side", [32, 256], ids=["one-block", "large"])
def test_graph_replay_draws_fresh_noise(side, loader):
    x = torch.rand(8, 3, side, side, device="cuda") * 2 - 1
    rng = torch.tensor([7, 0], dtype=torch.int64, device="cuda")
    ops.mani_noise(x, 500, rng_state=rng, backend="cuda")  # compile and build tables first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.mani_noise(x, 500, rng_state=rng, backend="cuda")
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)


def test_sanitizer_workload_runs_on_the_cuda_backend(loader, capsys):
    """bench/sanitize_ops.py, which compute-sanitizer runs on the GPU: a broken workload shows up
    before the device session."""
    sanitize_ops.main(["--backends", "cuda", "--device", loader.device])
    assert "cuda: ran 6 shapes, forward and backward" in capsys.readouterr().out


def test_op_benchmark_checks_and_times_the_cuda_provider(loader, capsys):
    """bench/bench_ops.py --smoke --backward: the cuda provider is checked against the reference
    and timed on every smoke shape (one-block, streamed-size and large planes), forward and
    forward + backward, as the device session will."""
    bench_ops.main(["--smoke", "--backward"])
    out = capsys.readouterr().out
    assert "RED GATE" not in out
    timed = [line for line in out.splitlines() if line.split()[2:4] == ["cuda", "p50"]]
    assert len(timed) == 4 * len(bench_ops.SMOKE_SHAPES), out


def _every_kernel():
    """One call of each kernel, forward and backward, over the three MANI paths; returns every
    output."""
    gen = torch.Generator().manual_seed(21)
    outputs = []
    for shape in ((2, 3, 31, 33), (1, 2, 72, 66), (1, 2, 256, 256)):
        x = (torch.rand(shape, generator=gen) * 2 - 1).requires_grad_()
        z = torch.randn(shape, generator=gen).requires_grad_()
        out = ops.mani_noise(x, 500, z, backend="cuda", normalize="max")
        outputs += [out, *torch.autograd.grad(out.square().sum(), (x, z))]
        rng = torch.tensor([5, 0], dtype=torch.int64)
        outputs.append(ops.mani_noise(x.detach(), 500, rng_state=rng, backend="cuda"))
    leaves = [torch.randn(2, 3, 31, 33, generator=gen).requires_grad_() for _ in range(4)]
    step = step_coefficients(199, 179, eta=1.0)
    big = [
        torch.randn(1, 2, 256, 256, generator=gen).requires_grad_() for _ in range(4)
    ]  # the cluster kernels
    out = ops.exchange_update(*big, torch.randn(1, 2, 256, 256, generator=gen), step=step, backend="cuda")
    outputs += [out, *torch.autograd.grad(out.square().sum(), big)]
    for mode in MODES:
        z = torch.randn(2, 3, 31, 33, generator=gen)
        out = ops.exchange_update(
            *leaves, z, step=step, phase_mode=mode[0], reconstruct=mode[1], backend="cuda"
        )
        outputs += [out, *torch.autograd.grad(out.square().sum(), leaves)]
    return outputs


@pytest.mark.skipif(ON_GPU, reason="the thread order is the CPU runtime's (racecheck covers the GPU)")
@pytest.mark.parametrize("loader", ["jit"], indirect=True)
def test_results_do_not_depend_on_the_order_threads_run_in(loader):
    """Every kernel gives bit-identical results with the warps and lanes of a block run in the
    opposite order between barriers: no thread reads what another writes without a barrier."""
    forward = _every_kernel()
    with cuda_on_cpu.schedule("reverse"):
        reverse = _every_kernel()
    for a, b in zip(forward, reverse):
        assert torch.equal(a, b)


# ---- the ops' registrations, and the library against the JIT -----------------------------------------


def test_opcheck(loader):
    """torch.library.opcheck on the custom ops: schema, fake tensors, autograd registration, AOT
    dispatch; the forwards with given and in-kernel noise, one-block and large planes."""
    gen = torch.Generator().manual_seed(8)
    x_t, eps, ref_t, eps_ref, z = _on(
        loader.device, *(torch.randn(2, 3, 16, 16, generator=gen) for _ in range(5))
    )
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    torch.library.opcheck(
        cuda_ops.exchange_update_cuda,
        (x_t, eps, ref_t, eps_ref, z, None, coefficients, 4.0, 3.0, False, False),
    )
    options = (300, 8, 1.8, 1e-6, "width", "spectral", "rms", False)
    torch.library.opcheck(cuda_ops.mani_noise_cuda, (x_t, z, None, *options))
    large, cluster = _on(
        loader.device,
        torch.rand(2, 3, 72, 80, generator=gen) * 2 - 1,
        torch.rand(1, 1, 256, 256, generator=gen),
    )
    for plane in (x_t, large, cluster):
        for noise in (torch.randn_like(plane), None):
            rng = torch.tensor([5, 0], device=plane.device) if noise is None else None
            torch.library.opcheck(cuda_ops.mani_noise_cuda, (plane, noise, rng, *options[:6], "max", False))
    grad = torch.randn_like(x_t)
    for plane in (x_t, cluster):
        g, noise = torch.randn_like(plane), torch.randn_like(plane)
        for noise_grad in (True, False):
            torch.library.opcheck(cuda_ops.mani_noise_backward_cuda, (g, plane, noise, *options, noise_grad))
    for with_eps_ref in (eps_ref, None):
        torch.library.opcheck(
            cuda_ops.exchange_update_backward_cuda,
            (grad, x_t, eps, ref_t, with_eps_ref, coefficients, 4.0, 3.0, True, False),
        )


@pytest.fixture
def both_loaders(monkeypatch):
    """(the library's op namespace, the device), with the JIT's launches beside it: on the GPU when
    both loaders are there, else both on the CPU runtime."""
    if ON_GPU:
        for name in cuda_ops.LOADERS:
            reason = cuda_ops.loader_unavailable_reason(name)
            if reason is not None:
                pytest.skip(reason)
        return torch.ops.manipure_aot, "cuda"
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    return aot.load(), "cpu"


def test_aot_library_refuses_planes_wider_than_the_kernels_rows(both_loaders):
    from manipure_fast.ops.dft_tables import band_frequencies, band_masks, band_tables

    library, device = both_loaders
    h, w = 4, cuda_ops.EXCHANGE_MAX_WIDTH + 1
    (x,) = _on(device, torch.zeros(1, 1, h, w))
    kh, kw = band_frequencies(h, 1.0).numel(), band_frequencies(w, 1.0).numel()
    tables = (*band_tables(h, 1.0, kh, h, x.device), *band_tables(w, 1.0, kw, w, x.device))
    masks = band_masks(h, w, 1.0, 1.0, kh, kw, x.device)
    shared = cuda_ops.exchange_backward_shared_bytes(h, w, 1.0)
    with pytest.raises(RuntimeError, match="up to 256 pixels wide, got 4x257"):
        library.exchange_update(x, x, x, None, x, None, *tables, *masks, [1.0] * 8, False, False, shared)
    with pytest.raises(RuntimeError, match="up to 256 pixels wide, got 4x257"):
        library.exchange_update_backward(x, x, x, x, None, *tables, *masks, [1.0] * 8, False, False, shared)


def test_aot_library_cluster_ops_refuse_other_planes_by_name(both_loaders):
    from manipure_fast.ops.dft_tables import fft_steps, half_spectrum_bands

    library, device = both_loaders
    (x,) = _on(device, torch.zeros(1, 1, 128, 128))
    band, share = half_spectrum_bands(256, 256, 8, "width", x.device)
    tables = (fft_steps(16, x.device), band, share, 8, 1.8, 1e-6, False, 1, 0.9, 0.4)
    with pytest.raises(RuntimeError, match="mani_noise_cluster takes 256x256 planes, got 128x128"):
        library.mani_noise_cluster(x, x, None, *tables)
    with pytest.raises(RuntimeError, match="mani_noise_cluster_backward takes 256x256 planes, got 128x128"):
        library.mani_noise_cluster_backward(x, x, x, *tables, False, True)
    from manipure_fast.ops.dft_tables import band_frequencies, band_masks, band_tables

    (y,) = _on(device, torch.zeros(1, 1, 20, 24))
    kh, kw = band_frequencies(20, 4.0).numel(), band_frequencies(24, 4.0).numel()
    bands = (*band_tables(20, 4.0, kh, 20, y.device), *band_tables(24, 4.0, kw, 24, y.device))
    masks = band_masks(20, 24, 4.0, 4.0, kh, kw, y.device)
    with pytest.raises(
        RuntimeError, match="exchange_update_cluster takes planes whose height is a multiple of 8"
    ):
        library.exchange_update_cluster(y, y, y, None, y, None, *bands, *masks, [1.0] * 8, False, False, 4096)
    with pytest.raises(
        RuntimeError, match="exchange_update_cluster_backward takes planes whose height is a multiple of 8"
    ):
        library.exchange_update_cluster_backward(
            y, y, y, y, None, *bands, *masks, [1.0] * 8, False, False, 4096
        )


def test_aot_library_ops_refuse_a_call_with_neither_noise_nor_rng_state(both_loaders):
    """The ops that draw noise take it given or draw it from rng_state: without either they
    refuse by name, and a given noise of the wrong shape is named too."""
    from manipure_fast.ops.dft_tables import (
        band_frequencies,
        band_masks,
        band_tables,
        fft_steps,
        half_spectrum_bands,
    )

    library, device = both_loaders
    x, wrong = _on(device, torch.zeros(1, 1, 20, 24), torch.zeros(1, 1, 20, 20))
    kh, kw = band_frequencies(20, 4.0).numel(), band_frequencies(24, 4.0).numel()
    bands = (*band_tables(20, 4.0, kh, 20, x.device), *band_tables(24, 4.0, kw, 24, x.device))
    masks = band_masks(20, 24, 4.0, 4.0, kh, kw, x.device)
    exchange = (*bands, *masks, [1.0] * 8, False, False, cuda_ops.exchange_shared_bytes(20, 24, 4.0))
    mani = (
        *cuda_ops._mani_tables(x, 8, "width"),
        1.8,
        1e-6,
        False,
        1,
        0.9,
        0.4,
        cuda_ops.mani_shared_bytes(20, 24, 8),
    )
    with pytest.raises(RuntimeError, match="exchange_update needs noise or rng_state"):
        library.exchange_update(x, x, x, None, None, None, *exchange)
    with pytest.raises(RuntimeError, match="mani_noise needs noise or rng_state"):
        library.mani_noise(x, None, None, *mani)
    with pytest.raises(RuntimeError, match="noise has shape"):
        library.mani_noise(x, wrong, None, *mani)
    with pytest.raises(RuntimeError, match="mani_inject needs noise or rng_state"):
        library.mani_inject(x, x, None, None, 1, 0.9, 0.4)
    (plane,) = _on(device, torch.zeros(1, 1, 256, 256))
    band, share = half_spectrum_bands(256, 256, 8, "width", plane.device)
    cluster = (fft_steps(16, plane.device), band, share, 8, 1.8, 1e-6, False, 1, 0.9, 0.4)
    with pytest.raises(RuntimeError, match="mani_noise_cluster needs noise or rng_state"):
        library.mani_noise_cluster(plane, None, None, *cluster)


def test_aot_library_ops_pass_opcheck_and_match_the_jit(both_loaders):
    """The library's twelve ops through opcheck, and against the JIT's launches of the same kernels,
    with given and in-kernel noise: the C++ glue passes every argument where it belongs. On the
    CPU both are g++ builds of the same source, so they agree bit for bit."""
    from manipure_fast.ops.dft_tables import band_frequencies, band_masks, band_tables, half_spectrum_bands

    library, device = both_loaders
    atol = 1e-6 if device == "cuda" else 0.0
    gen = torch.Generator().manual_seed(11)
    x_t, eps, ref_t, eps_ref, z = _on(device, *(torch.randn(3, 2, 20, 24, generator=gen) for _ in range(5)))
    kh, kw = band_frequencies(20, 4.0).numel(), band_frequencies(24, 4.0).numel()
    tables = (*band_tables(20, 4.0, kh, 20, x_t.device), *band_tables(24, 4.0, kw, 24, x_t.device))
    masks = band_masks(20, 24, 4.0, 3.0, kh, kw, x_t.device)
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    (rng,) = _on(device, torch.tensor([3, 2**33]))
    cases = []
    for noise, state, project, real in ((z, None, False, False), (None, rng, True, True)):
        args = (x_t, eps, ref_t, eps_ref, noise, state, *tables, *masks, coefficients, project, real,
                cuda_ops.exchange_shared_bytes(20, 24, 4.0))  # fmt: skip
        cases.append((library.exchange_update, cuda_ops._jit_exchange_update, args))
    for with_eps_ref in (eps_ref, None):
        args = (z, x_t, eps, ref_t, with_eps_ref, *tables, *masks, coefficients, True, False,
                cuda_ops.exchange_backward_shared_bytes(20, 24, 4.0))  # fmt: skip
        cases.append((library.exchange_update_backward, cuda_ops._jit_exchange_update_backward, args))
    (x,) = _on(device, torch.rand(3, 2, 20, 24, generator=gen) * 2 - 1)
    mani_tables = cuda_ops._mani_tables(x, 8, "width")
    for noise, state, normalize in ((z, None, 1), (None, rng, 2)):
        args = (x, noise, state, *mani_tables, 1.8, 1e-6, normalize == 2, normalize, 0.9, 0.4,
                cuda_ops.mani_shared_bytes(20, 24, 8))  # fmt: skip
        cases.append((library.mani_noise, cuda_ops._jit_mani_noise, args))
    for detach_map, noise_grad in ((False, True), (True, False)):
        args = (z, x, eps, *mani_tables, 1.8, 1e-6, False, 1, 0.9, 0.4, detach_map, noise_grad,
                cuda_ops.mani_backward_shared_bytes(20, 24, 8))  # fmt: skip
        cases.append((library.mani_noise_backward, cuda_ops._jit_mani_noise_backward, args))
    # the large-plane path's kernels, forward and backward
    large, large_noise, large_grad = _on(
        device,
        torch.rand(2, 3, 96, 80, generator=gen) * 2 - 1,
        torch.randn(2, 3, 96, 80, generator=gen),
        torch.randn(2, 3, 96, 80, generator=gen),
    )
    band, share = half_spectrum_bands(96, 80, 8, "width", large.device)
    spectrum = torch.view_as_real(torch.fft.rfft2(large)).contiguous()
    for weight_kernel, store_stats in ((False, True), (True, False)):
        args = (spectrum, band, share, 8, 1.8, 1e-6, weight_kernel, store_stats)
        cases.append((library.mani_band_weights, cuda_ops._jit_mani_band_weights, args))
    shaped = torch.fft.irfft2(torch.fft.rfft2(large), s=(96, 80)).contiguous()
    for noise, state, normalize in ((large_noise, None, 0), (None, rng, 1), (None, rng, 2)):
        args = (large, shaped, noise, state, normalize, 0.9, 0.4)
        cases.append((library.mani_inject, cuda_ops._jit_mani_inject, args))
    for normalize, detach_map, noise_grad in ((1, False, True), (2, False, False), (0, True, True)):
        args = (large_grad, large_noise, shaped, normalize, 0.4, detach_map, noise_grad)
        cases.append((library.mani_map_gradient, cuda_ops._jit_mani_map_gradient, args))
    _, stats = cuda_ops._jit_mani_band_weights(spectrum, band, share, 8, 1.8, 1e-6, False, True)
    g_spectrum = torch.view_as_real(torch.fft.rfft2(large_grad)).contiguous()
    for weight_kernel in (False, True):
        args = (g_spectrum, spectrum, stats, band, share, 1.8, weight_kernel)
        cases.append((library.mani_spectrum_gradient, cuda_ops._jit_mani_spectrum_gradient, args))

    # the 256x256 planes' cluster kernels: the exchange, MANI forward and backward
    from manipure_fast.ops.dft_tables import fft_steps

    big = _on(device, *(torch.randn(1, 2, 256, 256, generator=gen) for _ in range(5)))
    kb = band_frequencies(256, 10.0).numel()
    big_tables = (*band_tables(256, 10.0, kb, 256, big[0].device),) * 2
    big_masks = band_masks(256, 256, 10.0, 8.0, kb, kb, big[0].device)
    for noise, state, with_eps_ref in ((big[4], None, big[3]), (None, rng, None)):
        args = (*big[:3], with_eps_ref, noise, state, *big_tables, *big_masks, coefficients, True, False,
                cuda_ops.exchange_cluster_shared_bytes(256, 256, 10.0))  # fmt: skip
        cases.append((library.exchange_update_cluster, cuda_ops._jit_exchange_update_cluster, args))
    for with_eps_ref, project, real in ((big[3], True, False), (None, False, True)):
        args = (big[4], *big[:3], with_eps_ref, *big_tables, *big_masks, coefficients, project, real,
                cuda_ops.exchange_cluster_backward_shared_bytes(256, 256, 10.0))  # fmt: skip
        cases.append(
            (library.exchange_update_cluster_backward, cuda_ops._jit_exchange_update_cluster_backward, args)
        )

    cluster, cluster_noise = _on(
        device, torch.rand(1, 2, 256, 256, generator=gen), torch.randn(1, 2, 256, 256)
    )
    band, share = half_spectrum_bands(256, 256, 8, "width", cluster.device)
    steps = fft_steps(16, cluster.device)
    for noise, state, weight_kernel, normalize in ((cluster_noise, None, False, 1), (None, rng, True, 2)):
        args = (cluster, noise, state, steps, band, share, 8, 1.8, 1e-6, weight_kernel, normalize, 0.9, 0.4)
        cases.append((library.mani_noise_cluster, cuda_ops._jit_mani_noise_cluster, args))
    for normalize, detach_map, noise_grad in ((1, False, True), (2, False, False), (0, True, True)):
        args = (cluster_noise, cluster, cluster_noise, steps, band, share, 8, 1.8, 1e-6, normalize == 0,
                normalize, 0.9, 0.4, detach_map, noise_grad)  # fmt: skip
        cases.append((library.mani_noise_cluster_backward, cuda_ops._jit_mani_noise_cluster_backward, args))

    for op, jit, args in cases:
        torch.library.opcheck(op.default, args)
        built, launched = op(*args), jit(*args)
        for b, j in zip(*(r if isinstance(r, tuple) else (r,) for r in (built, launched))):
            torch.testing.assert_close(b, j, rtol=0, atol=atol, msg=lambda m, op=op: f"{op}: {m}")


def test_tune_cuda_smoke_runs_every_variant_through_the_kernels(monkeypatch):
    """bench/tune_cuda.py's variants on small planes, on the CPU runtime: each compiles, launches
    and stays within its red gate. The defines reach the compiled source: the FMA loops differ
    from the tensor-core path by rounding, and a define the kernels refuse fails the compile."""
    reason = cuda_on_cpu.compiler_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    rows = tune_cuda.main(["--smoke"])
    assert all("error" not in r and "red_gate" not in r for r in rows), rows
    variants = {(r["op"], r["direction"], r["label"], r["variant"]) for r in rows}
    assert ("exchange_update", "forward", "cifar-B512", "FMA loops") in variants
    assert ("mani_noise", "forward", "cifar-B512", "FMA loops") in variants
    assert ("exchange_update", "backward", "cifar-B512", "FMA loops") in variants
    assert ("mani_noise", "backward", "cifar-B512", "FMA loops") in variants
    assert ("exchange_update", "backward", "imagenet-B64", "8 inverse rows per thread") in variants
    assert ("exchange_update", "forward", "imagenet-B64", "every band column summed") in variants
    assert ("exchange_update", "backward", "imagenet-B64", "unpaired frequencies") in variants
    assert ("exchange_update", "forward", "imagenet-B64", "complex y everywhere") in variants
    assert ("exchange_update", "backward", "imagenet-B64", "complex y everywhere") in variants
    assert ("exchange_update", "backward", "cifar-B512", "complex y everywhere") in variants
    assert ("exchange_update", "forward", "cifar-B512", "whole W band") in variants
    assert ("mani_noise", "forward", "imagenet-B64", "4 launches around cuFFT") in variants
    assert ("mani_noise", "backward", "imagenet-B64", "8 launches around cuFFT") in variants
    assert ("exchange_update", "forward", "imagenet-B64", "one block per plane") in variants
    assert ("exchange_update", "backward", "imagenet-B64", "one block per plane") in variants
    fma = [r for r in rows if r["variant"] == "FMA loops"]
    assert all(0 < r["max_diff_vs_shipped"] <= tune_cuda.RED_GATE for r in fma), fma
    x = torch.zeros(1, 1, 36, 40)
    with tune_cuda.compiled_with({"MANIPURE_INVERSE_ROWS_PER_THREAD": 0}):
        with pytest.raises(RuntimeError, match="at least one row per thread"):
            cuda_ops.launch_exchange_update(x, x, x, x, x, None, [1.0] * 8, 3.0, 3.0, False, False)
