"""The CUDA C++ kernels (kernels/cuda): every source compiles for sm_90 with nvcc (CI has nvcc and
no GPU), the backend is explicit-only and refuses clearly where it cannot run; on a GPU, through each
loader that is available (the ahead-of-time library and the CuPy JIT): forward against the reference
and the triton ops, in-kernel Philox noise, gradients, graph replay and torch.library's opcheck.
The library's build itself is tested in test_cuda_library.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from manipure_fast import ops
from manipure_fast import reference as ref
from manipure_fast.ops import cuda_ops
from manipure_fast.reference.schedule import step_coefficients

# what the JIT compiles
KERNEL_FILES = (
    "exchange_update.cu",
    "exchange_update_backward.cu",
    "mani_noise.cu",
    "mani_noise_backward.cu",
    "mani_noise_large.cu",
)
SOURCES = sorted(cuda_ops.cuda_source_dir().glob("*.cu"))


def test_there_are_cuda_sources():
    assert {p.name for p in SOURCES} == {*KERNEL_FILES, "launchers.cu"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_sources_compile_for_sm90(source, tmp_path):
    """The file as nvcc/CMake sees it, and as NVRTC sees it (header inlined), compile cleanly."""
    variants = [(source, [f"-I{source.parent}"])]
    if source.name in KERNEL_FILES:
        inlined = tmp_path / source.name
        inlined.write_text(cuda_ops.kernel_source(source.name))
        variants.append((inlined, []))
    for path, include in variants:
        result = subprocess.run(
            ["nvcc", "-arch=sm_90", "-std=c++17", "-Werror=all-warnings", *include, "-c", str(path),
             "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


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
    assert cuda_ops.MANI_MAX_SIDE == 64  # larger MANI planes take cuFFT and mani_noise_large.cu
    assert cuda_ops.exchange_shared_bytes(256, 256, 200) > cuda_ops.MAX_SHARED_BYTES  # refused at launch


def test_loader_selection_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MANIPURE_CUDA_LOADER", "nvrtc")
    with pytest.raises(ValueError, match="MANIPURE_CUDA_LOADER"):
        cuda_ops.requested_loader()
    monkeypatch.setenv("MANIPURE_CUDA_LOADER", "jit")
    assert cuda_ops.active_loader() == "jit"


# ---- on a GPU, through each loader -------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(params=cuda_ops.LOADERS)
def loader(request, monkeypatch):
    """Runs the test once per loader (the AOT library, the CuPy JIT), skipping one that is absent."""
    reason = cuda_ops.loader_unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("MANIPURE_CUDA_LOADER", request.param)
    return request.param


SHAPES = [(b, c, h, w) for (h, w) in ((31, 33), (28, 28), (32, 32), (64, 64)) for c in (1, 3) for b in (1, 7)]
SHAPES += [(64, 3, 32, 32)]
# Above 64x64, MANI takes the large-plane path (rfft2, mani_noise_large.cu, irfft2).
MANI_SHAPES = SHAPES + [(1, 3, 256, 256), (7, 1, 256, 256), (64, 3, 256, 256), (2, 1, 67, 65)]


def _bound(out, exact, eager, atol=1e-5):
    err = (out.double() - exact).abs().max()
    bound = 2 * (eager.double() - exact).abs().max() + atol
    assert err <= bound, f"max err {err:.3g} > {bound:.3g}"


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", MANI_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mani_noise_matches_reference(shape, dtype, loader):
    gen = torch.Generator("cuda").manual_seed(sum(shape))
    x = (torch.rand(shape, generator=gen, device="cuda") * 2 - 1).to(dtype)
    z = torch.randn(shape, generator=gen, device="cuda")
    out = ops.mani_noise(x, 300, z, backend="cuda")
    _bound(out, ref.mani_noise(x.double(), 300, z.double()), ref.mani_noise(x.float(), 300, z))
    torch.testing.assert_close(out, ops.mani_noise(x, 300, z, backend="triton"), rtol=0, atol=1e-4)


@gpu
@pytest.mark.parametrize(
    "options",
    [
        dict(band_mode="count"),
        dict(weight_map="kernel"),
        dict(normalize="max"),
        dict(normalize="none", n_bands=3),
    ],
)
@pytest.mark.parametrize("shape", [(2, 3, 20, 24), (1, 2, 72, 81)], ids=["one-block", "large"])
def test_mani_noise_options(options, shape, loader):
    x = torch.rand(shape, device="cuda") * 2 - 1
    z = torch.randn_like(x)
    out = ops.mani_noise(x, 700, z, backend="cuda", **options)
    _bound(out, ref.mani_noise(x.double(), 700, z.double(), **options), ref.mani_noise(x, 700, z, **options))


EXCHANGE_SHAPES = SHAPES + [(1, 3, 256, 256), (7, 1, 256, 256), (64, 3, 256, 256)]


@gpu
@pytest.mark.parametrize("mode", [("replace", "abs"), ("project", "real")], ids=lambda m: "-".join(m))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", EXCHANGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_exchange_update_matches_reference(shape, dtype, mode, loader):
    gen = torch.Generator("cuda").manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z = (torch.randn(shape, generator=gen, device="cuda") for _ in range(5))
    x_t, eps = x_t.to(dtype), eps.to(dtype)
    step = step_coefficients(99, 89, eta=1.0)
    options = dict(step=step, phase_mode=mode[0], reconstruct=mode[1])
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="cuda", **options)

    def reference(*tensors):
        return ops.exchange_update(*tensors, backend="reference", **options)

    exact = reference(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)))
    _bound(out, exact, reference(*(t.float() for t in (x_t, eps, ref_t, eps_ref, z))))
    triton = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="triton", **options)
    torch.testing.assert_close(out, triton, rtol=0, atol=1e-4)


@gpu
def test_exchange_update_without_reference_model_call(loader):
    x_t, eps, ref_t, z = (torch.randn(2, 3, 32, 32, device="cuda") for _ in range(4))
    step = step_coefficients(29, 19, eta=0.0)
    out = ops.exchange_update(x_t, eps, ref_t, None, z, step=step, backend="cuda")
    expected = ops.exchange_update(x_t, eps, ref_t, None, z, step=step, backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


@gpu
def test_philox_noise_statistics_and_fresh_draws(loader):
    x = torch.zeros(64, 3, 32, 32, device="cuda")
    rng = torch.tensor([1234, 0], dtype=torch.int64, device="cuda")
    first = ops.mani_noise(x, 999, rng_state=rng, backend="cuda", normalize="none", weight_map="kernel")
    second = ops.mani_noise(x, 999, rng_state=rng, backend="cuda", normalize="none", weight_map="kernel")
    assert int(rng[1]) == 2 * x.numel()
    assert not torch.equal(first, second)
    rng.copy_(torch.tensor([1234, 0]))
    again = ops.mani_noise(x, 999, rng_state=rng, backend="cuda", normalize="none", weight_map="kernel")
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    # exchange_update with x_t = eps = 0 and c1 = 1, c2 = 0 exposes its noise: mean 0, std 1
    step = step_coefficients(999, 989, eta=1.0)
    zeros = torch.zeros(64, 3, 32, 32, device="cuda")
    out = ops.exchange_update(zeros, zeros, zeros, None, step=step, rng_state=rng, backend="cuda")
    noise = (out - out.mean()) / step.c1
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    planes = noise.view(-1, 32 * 32)
    assert abs(float(torch.corrcoef(planes[:2])[0, 1])) < 0.15


@gpu
def test_gradients_match_reference(loader):
    gen = torch.Generator("cuda").manual_seed(5)
    inputs = [torch.randn(2, 3, 16, 20, generator=gen, device="cuda") for _ in range(4)]
    z = torch.randn(2, 3, 16, 20, generator=gen, device="cuda")
    step = step_coefficients(29, 19, eta=1.0)
    weight = torch.linspace(0, 1, z.numel(), device="cuda").view_as(z)
    grads = []
    for backend in ("cuda", "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = ops.exchange_update(
            *leaves, z, step=step, amplitude_cut_range=3, phase_cut_range=2, backend=backend
        )
        x = leaves[0]
        mani = ops.mani_noise(x, 400, z, backend=backend)
        grads.append(torch.autograd.grad((out * weight).sum() + (mani * weight).sum(), leaves))
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-4)


@gpu
@pytest.mark.parametrize("mode", [("replace", "abs"), ("project", "real")], ids=lambda m: "-".join(m))
@pytest.mark.parametrize(
    "shape, cuts, with_eps_ref",
    [((1, 3, 31, 33), (10, 10), True), ((7, 1, 28, 28), (4, 7), False), ((2, 3, 256, 256), (10, 10), True)],
    ids=["31x33", "28x28-no-eps-ref", "256x256"],
)
def test_fused_exchange_backward_matches_autograd(shape, cuts, with_eps_ref, mode, loader):
    """The CUDA backward kernel against fp64 autograd through the reference, within twice the fp32
    reference's own gradient error (as tests/test_triton_ops.py checks the Triton backward)."""
    gen = torch.Generator("cuda").manual_seed(sum(shape))
    inputs = [torch.randn(shape, generator=gen, device="cuda") * 0.6 for _ in range(4)]
    if not with_eps_ref:
        inputs[3] = None
    weight = torch.randn(shape, generator=gen, device="cuda")
    z = torch.randn(shape, generator=gen, device="cuda")
    options = dict(step=step_coefficients(199, 179, eta=1.0), amplitude_cut_range=cuts[0],
                   phase_cut_range=cuts[1], phase_mode=mode[0], reconstruct=mode[1])  # fmt: skip

    def gradients(backend, dtype):
        leaves = [None if t is None else t.to(dtype).requires_grad_() for t in inputs]
        out = ops.exchange_update(*leaves, z.to(dtype), backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), [t for t in leaves if t is not None])

    fused, exact, eager = (
        gradients("cuda", torch.float32),
        gradients("reference", torch.float64),
        gradients("reference", torch.float32),
    )
    scale = max(float(g.abs().max()) for g in exact)
    for g_fast, g_exact, g_eager in zip(fused, exact, eager):
        err = (g_fast.double() - g_exact).abs().max()
        assert err <= 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale


@gpu
@pytest.mark.parametrize(
    "shape, options",
    [
        ((1, 3, 31, 33), {}),
        ((7, 1, 28, 28), dict(band_mode="count", weight_map="kernel")),
        ((2, 3, 64, 64), dict(normalize="max")),
        ((2, 2, 16, 20), dict(normalize="none", n_bands=5, gamma=1.2)),
        ((1, 2, 12, 16), dict(detach_map=True)),
        ((2, 3, 256, 256), {}),  # the large-plane path: recomputed through the reference
        ((1, 1, 67, 65), dict(weight_map="kernel", normalize="max")),
    ],
    ids=["31x33", "28x28-count-kernel", "64x64-max", "16x20-none", "detached", "256x256", "67x65-kernel-max"],
)
def test_mani_backward_matches_autograd(shape, options, loader):
    gen = torch.Generator("cuda").manual_seed(sum(shape))
    x0 = torch.rand(shape, generator=gen, device="cuda") * 2 - 1
    z0 = torch.randn(shape, generator=gen, device="cuda")
    weight = torch.randn(shape, generator=gen, device="cuda")

    def gradients(backend, dtype):
        x, z = x0.to(dtype).requires_grad_(), z0.to(dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), (x, z))

    fused = gradients("cuda", torch.float32)
    exact = gradients("reference", torch.float64)
    eager = gradients("reference", torch.float32)
    scale = max(float(g.abs().max()) for g in exact)
    for g_fast, g_exact, g_eager in zip(fused, exact, eager):
        err = (g_fast.double() - g_exact).abs().max()
        assert err <= 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale


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


@gpu
def test_opcheck(loader):
    x_t, eps, ref_t, eps_ref, z = (torch.randn(2, 3, 16, 16, device="cuda") for _ in range(5))
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    torch.library.opcheck(
        cuda_ops.exchange_update_cuda,
        (x_t, eps, ref_t, eps_ref, z, None, coefficients, 4.0, 3.0, False, False),
    )
    torch.library.opcheck(
        cuda_ops.mani_noise_cuda, (x_t, z, None, 300, 8, 1.8, 1e-6, "width", "spectral", "rms", False)
    )
    large = torch.rand(2, 3, 72, 80, device="cuda") * 2 - 1
    for noise in (torch.randn_like(large), None):
        rng = torch.tensor([5, 0], dtype=torch.int64, device="cuda") if noise is None else None
        torch.library.opcheck(
            cuda_ops.mani_noise_cuda,
            (large, noise, rng, 300, 8, 1.8, 1e-6, "width", "spectral", "max", False),
        )
    grad = torch.randn_like(x_t)
    for noise_grad in (True, False):
        torch.library.opcheck(
            cuda_ops.mani_noise_backward_cuda,
            (grad, x_t, z, 300, 8, 1.8, 1e-6, "width", "spectral", "rms", False, noise_grad),
        )
    for ref_eps in (eps_ref, None):
        torch.library.opcheck(
            cuda_ops.exchange_update_backward_cuda,
            (grad, x_t, eps, ref_t, ref_eps, coefficients, 4.0, 3.0, True, False),
        )


@gpu
def test_aot_library_ops_pass_opcheck_and_match_the_jit():
    for name in cuda_ops.LOADERS:
        reason = cuda_ops.loader_unavailable_reason(name)
        if reason is not None:
            pytest.skip(reason)
    from manipure_fast.ops.dft_tables import band_frequencies, band_masks, band_tables

    gen = torch.Generator("cuda").manual_seed(11)
    x_t, eps, ref_t, eps_ref, z = (torch.randn(3, 2, 20, 24, generator=gen, device="cuda") for _ in range(5))
    kh, kw = band_frequencies(20, 4.0).numel(), band_frequencies(24, 4.0).numel()
    tables = (*band_tables(20, 4.0, kh, 20, x_t.device), *band_tables(24, 4.0, kw, 24, x_t.device))
    masks = band_masks(20, 24, 4.0, 3.0, kh, kw, x_t.device)
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    args = (x_t, eps, ref_t, eps_ref, z, None, *tables, *masks, coefficients, False, False,
            cuda_ops.exchange_shared_bytes(20, 24, 4.0))  # fmt: skip
    torch.library.opcheck(torch.ops.manipure_aot.exchange_update.default, args)
    aot = torch.ops.manipure_aot.exchange_update(*args)
    torch.testing.assert_close(aot, cuda_ops._jit_exchange_update(*args), rtol=0, atol=1e-6)
    # in-kernel noise: the same seed/offset draws the same noise through both loaders
    rng = torch.tensor([3, 0], dtype=torch.int64, device="cuda")
    drawn = (*args[:4], None, rng, *args[6:])
    torch.testing.assert_close(
        torch.ops.manipure_aot.exchange_update(*drawn),
        cuda_ops._jit_exchange_update(*drawn),
        rtol=0,
        atol=1e-6,
    )


@gpu
def test_large_plane_mani_kernels_pass_opcheck_and_match_the_jit():
    """The large-plane path's two AOT ops (mani_band_weights, mani_inject) against opcheck and the
    JIT's launches of the same sources, with given and with in-kernel noise."""
    for name in cuda_ops.LOADERS:
        reason = cuda_ops.loader_unavailable_reason(name)
        if reason is not None:
            pytest.skip(reason)
    from manipure_fast.ops.dft_tables import half_spectrum_bands

    gen = torch.Generator("cuda").manual_seed(12)
    x = torch.rand(2, 3, 96, 80, generator=gen, device="cuda") * 2 - 1
    z = torch.randn(2, 3, 96, 80, generator=gen, device="cuda")
    band, share = half_spectrum_bands(96, 80, 8, "width", x.device)
    spectrum = torch.view_as_real(torch.fft.rfft2(x)).contiguous()
    for weight_kernel in (False, True):
        args = (spectrum, band, share, 8, 1.8, 1e-6, weight_kernel)
        torch.library.opcheck(torch.ops.manipure_aot.mani_band_weights.default, args)
        torch.testing.assert_close(
            torch.ops.manipure_aot.mani_band_weights(*args),
            cuda_ops._jit_mani_band_weights(*args),
            rtol=0,
            atol=0,
        )
    shaped = torch.fft.irfft2(torch.fft.rfft2(x), s=(96, 80)).contiguous()
    for normalize in (0, 1, 2):
        for noise in (z, None):
            rng = torch.tensor([9, 0], dtype=torch.int64, device="cuda") if noise is None else None
            args = (x, shaped, noise, rng, normalize, 0.9, 0.4)
            torch.library.opcheck(torch.ops.manipure_aot.mani_inject.default, args)
            aot, jit = torch.ops.manipure_aot.mani_inject(*args), cuda_ops._jit_mani_inject(*args)
            for a, j in zip(aot, jit):
                torch.testing.assert_close(a, j, rtol=0, atol=0)
