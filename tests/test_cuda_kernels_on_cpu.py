"""The cuda backend's kernels (kernels/cuda), run on the CPU by tests/cuda_on_cpu: their real
source, launched through the real launch code (the JIT loader's argument lists, grid and shared
memory), behind the public ops, the custom ops and their autograd formulas. CI has no GPU; this is
where the kernels' arithmetic, indexing and barriers are checked before a device ever runs them.

Tolerances are those of test_cuda_ops.py (the same checks on the GPU): within twice eager fp32's own
error against the fp64 reference. What this cannot check (device math functions, the AOT loader,
concurrency between blocks, timing) stays with test_cuda_ops.py."""

from __future__ import annotations

import contextlib

import cuda_on_cpu
import numpy
import pytest
import torch
from conftest import LinearEps
from cuda_on_cpu import aot

from bench import sanitize_ops
from manipure_fast import PurifierConfig, RecordedNoise, Round, ops
from manipure_fast import reference as ref
from manipure_fast.ops import cuda_ops, registry
from manipure_fast.reference.schedule import step_coefficients
from manipure_fast.sampler import purify_diffusion

pytestmark = pytest.mark.skipif(
    cuda_on_cpu.compiler_unavailable_reason() is not None,
    reason=str(cuda_on_cpu.compiler_unavailable_reason()),
)

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


def _no_jit_launch(*args, **kwargs):
    raise AssertionError("a JIT launch under the aot loader")


@pytest.fixture(params=cuda_ops.LOADERS)
def cuda_backend(request, monkeypatch):
    """backend="cuda" on CPU tensors, once per loader. "jit": the JIT loader's launches go to the
    CPU runtime. "aot": the ahead-of-time library's sources, built for the CPU (cuda_on_cpu.aot),
    stand in for the library. Either way the custom ops run their own bodies (the CPU kernel
    registered above, disabled) instead of refusing."""
    monkeypatch.setattr(cuda_ops, "active_loader", lambda: request.param)
    if request.param == "aot":
        monkeypatch.setattr(torch.ops, "manipure_aot", aot.load(), raising=False)
        monkeypatch.setattr(cuda_ops, "_launch", _no_jit_launch)
    else:
        monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)
    device_check = registry.unsupported_reason
    monkeypatch.setattr(
        registry, "unsupported_reason", lambda b, op, x: None if b == "cuda" else device_check(b, op, x)
    )
    with contextlib.ExitStack() as stack:
        for op in CUSTOM_OPS:
            stack.enter_context(op.set_kernel_enabled("cpu", False))
        yield request.param


def _bound(out, exact, eager, atol=1e-5):
    err = (out.double() - exact).abs().max()
    bound = 2 * (eager.double() - exact).abs().max() + atol
    assert err <= bound, f"max err {err:.3g} > {bound:.3g}"


def _ids(shape):
    return "x".join(map(str, shape))


# One block per plane up to 64x64 (odd, thin, square, batched), the large-plane path above.
MANI_SHAPES = [(1, 1, 31, 33), (2, 3, 16, 20), (1, 1, 64, 64), (2, 1, 3, 64), (1, 1, 64, 1), (1, 2, 67, 65)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", MANI_SHAPES, ids=_ids)
def test_mani_noise_kernels_match_reference(shape, dtype, cuda_backend):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)
    z = torch.randn(shape, generator=gen)
    out = ops.mani_noise(x, 300, z, backend="cuda")
    _bound(out, ref.mani_noise(x.double(), 300, z.double()), ref.mani_noise(x.float(), 300, z))


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
@pytest.mark.parametrize("shape", [(2, 3, 20, 24), (1, 2, 72, 81)], ids=["one-block", "large"])
def test_mani_noise_kernel_options(options, shape, cuda_backend):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = torch.randn_like(x)
    out = ops.mani_noise(x, 700, z, backend="cuda", **options)
    _bound(out, ref.mani_noise(x.double(), 700, z.double(), **options), ref.mani_noise(x, 700, z, **options))


@pytest.mark.parametrize(
    "shape, options",
    [
        ((1, 3, 31, 33), {}),
        ((2, 1, 28, 28), dict(band_mode="count", weight_map="kernel")),
        ((1, 1, 64, 64), dict(normalize="max")),
        ((2, 2, 16, 20), dict(normalize="none", n_bands=5, gamma=1.2)),
        ((1, 2, 12, 16), dict(detach_map=True)),
        ((1, 1, 67, 65), dict(weight_map="kernel", normalize="max")),  # recomputed through the reference
    ],
    ids=["31x33", "28x28-count-kernel", "64x64-max", "16x20-none", "detached", "67x65-kernel-max"],
)
def test_mani_backward_kernel_matches_autograd(shape, options, cuda_backend):
    gen = torch.Generator().manual_seed(sum(shape))
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    z0 = torch.randn(shape, generator=gen)
    weight = torch.randn(shape, generator=gen)

    def gradients(backend, dtype):
        x, z = x0.to(dtype).requires_grad_(), z0.to(dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), (x, z))

    _assert_gradients_close(gradients)


def _assert_gradients_close(gradients):
    """The cuda backend's fp32 gradients against fp64 autograd through the reference, within twice
    the fp32 reference's own error (plus 1e-5 of the largest gradient)."""
    fused, exact, eager = (
        gradients("cuda", torch.float32),
        gradients("reference", torch.float64),
        gradients("reference", torch.float32),
    )
    scale = max(float(g.abs().max()) for g in exact)
    for g_fast, g_exact, g_eager in zip(fused, exact, eager):
        err = (g_fast.double() - g_exact).abs().max()
        assert err <= 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale


MODES = [("replace", "abs"), ("project", "real")]
EXCHANGE_SHAPES = [
    (1, 3, 31, 33),
    (2, 1, 28, 28),
    (1, 1, 64, 64),
    (2, 1, 5, 7),
    (1, 1, 1, 40),
    (1, 1, 256, 256),
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
@pytest.mark.parametrize("shape", EXCHANGE_SHAPES, ids=_ids)
def test_exchange_update_kernel_matches_reference(shape, mode, cuda_backend):
    gen = torch.Generator().manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z = (torch.randn(shape, generator=gen) for _ in range(5))
    options = dict(step=step_coefficients(99, 89, eta=1.0), phase_mode=mode[0], reconstruct=mode[1])
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend="cuda", **options)

    def reference(*tensors):
        return ops.exchange_update(*tensors, backend="reference", **options)

    exact = reference(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)))
    _bound(out, exact, reference(x_t, eps, ref_t, eps_ref, z))


def test_exchange_update_kernel_without_reference_model_call(cuda_backend):
    x_t, eps, ref_t, z = (
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)
    )
    step = step_coefficients(29, 19, eta=0.0)
    out = ops.exchange_update(x_t, eps, ref_t, None, z, step=step, amplitude_cut_range=4, backend="cuda")
    expected = ops.exchange_update(
        x_t, eps, ref_t, None, z, step=step, amplitude_cut_range=4, backend="reference"
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(m))
@pytest.mark.parametrize(
    "shape, cuts, with_eps_ref",
    [((1, 3, 31, 33), (10, 10), True), ((2, 1, 28, 28), (4, 7), False), ((1, 1, 96, 80), (10, 6), True)],
    ids=["31x33", "28x28-no-eps-ref", "96x80"],
)
def test_exchange_backward_kernel_matches_autograd(shape, cuts, with_eps_ref, mode, cuda_backend):
    gen = torch.Generator().manual_seed(sum(shape))
    inputs = [torch.randn(shape, generator=gen) * 0.6 for _ in range(4)]
    if not with_eps_ref:
        inputs[3] = None
    weight, z = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    options = dict(step=step_coefficients(199, 179, eta=1.0), amplitude_cut_range=cuts[0],
                   phase_cut_range=cuts[1], phase_mode=mode[0], reconstruct=mode[1])  # fmt: skip

    def gradients(backend, dtype):
        leaves = [None if t is None else t.to(dtype).requires_grad_() for t in inputs]
        out = ops.exchange_update(*leaves, z.to(dtype), backend=backend, **options)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), [t for t in leaves if t is not None])

    _assert_gradients_close(gradients)


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
    words = lambda v: (v & numpy.uint64(0xFFFFFFFF), v >> numpy.uint64(32))  # noqa: E731
    seed64, offset64 = numpy.uint64(seed), numpy.uint64(offset)
    r = philox4x32_10((*words(index), *words(offset64)), words(seed64))
    u1 = (r[0].astype(numpy.float64) + 1) * 2.0**-32
    u2 = r[1].astype(numpy.float64) * 2.0**-32
    return numpy.sqrt(-2 * numpy.log(u1)) * numpy.cos(2 * numpy.pi * u2)


@pytest.mark.parametrize(
    "seed, offset", [(1234, 0), (2**40 + 7, 3 * 2**33 + 5)], ids=["small", "64-bit-words"]
)
def test_in_kernel_noise_is_philox_box_muller(seed, offset, cuda_backend):
    """The MANI kernels' stored draws (one-block and large-plane) and the exchange kernel's noise
    (x_t = eps = 0 leaves x_next = c1 z) against Philox4x32-10 computed here."""
    for shape in ((2, 3, 12, 16), (1, 2, 72, 66)):
        x = torch.rand(shape) * 2 - 1
        rng = torch.tensor([seed, offset], dtype=torch.int64)
        _, drawn = cuda_ops.launch_mani_noise(x, None, rng, 500, 8, 1.8, 1e-6, "width", "spectral", "rms")
        expected = expected_normals(seed, offset, x.numel()).reshape(shape)
        numpy.testing.assert_allclose(drawn.numpy(), expected, rtol=1e-5, atol=2e-5)
    zeros = torch.zeros(2, 3, 32, 32)
    step = step_coefficients(999, 989, eta=1.0)
    rng = torch.tensor([seed, offset], dtype=torch.int64)
    out = ops.exchange_update(zeros, zeros, zeros, None, step=step, rng_state=rng, backend="cuda")
    expected = expected_normals(seed, offset, zeros.numel()).reshape(zeros.shape)
    numpy.testing.assert_allclose(out.numpy() / step.c1, expected, rtol=1e-5, atol=2e-5)


def test_in_kernel_noise_advances_on_the_device_and_reproduces(cuda_backend):
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    rng = torch.tensor([99, 0], dtype=torch.int64)
    first = ops.mani_noise(x, 800, rng_state=rng, backend="cuda")
    second = ops.mani_noise(x, 800, rng_state=rng, backend="cuda")
    assert int(rng[1]) == 2 * x.numel() and not torch.equal(first, second)
    rng.copy_(torch.tensor([99, 0]))
    torch.testing.assert_close(ops.mani_noise(x, 800, rng_state=rng, backend="cuda"), first, rtol=0, atol=0)
    # the drawn noise: mean 0, std 1, planes uncorrelated
    _, drawn = cuda_ops.launch_mani_noise(x, None, rng, 800, 8, 1.8, 1e-6, "width", "spectral", "none")
    assert abs(float(drawn.mean())) < 0.05 and abs(float(drawn.std()) - 1) < 0.05
    assert abs(float(torch.corrcoef(drawn.view(-1, 256)[:2])[0, 1])) < 0.2


# ---- thread order (racecheck's question) and the custom ops' registrations ------------------------


def _every_kernel():
    """One call of each kernel, forward and backward, over both MANI paths; returns every output."""
    gen = torch.Generator().manual_seed(21)
    outputs = []
    for shape in ((2, 3, 31, 33), (1, 2, 72, 66)):
        x = (torch.rand(shape, generator=gen) * 2 - 1).requires_grad_()
        z = torch.randn(shape, generator=gen).requires_grad_()
        out = ops.mani_noise(x, 500, z, backend="cuda", normalize="max")
        outputs += [out, *torch.autograd.grad(out.square().sum(), (x, z))]
        rng = torch.tensor([5, 0], dtype=torch.int64)
        outputs.append(ops.mani_noise(x.detach(), 500, rng_state=rng, backend="cuda"))
    leaves = [torch.randn(2, 3, 31, 33, generator=gen).requires_grad_() for _ in range(4)]
    step = step_coefficients(199, 179, eta=1.0)
    for mode in MODES:
        z = torch.randn(2, 3, 31, 33, generator=gen)
        options = dict(step=step, phase_mode=mode[0], reconstruct=mode[1])
        out = ops.exchange_update(*leaves, z, backend="cuda", **options)
        outputs += [out, *torch.autograd.grad(out.square().sum(), leaves)]
    return outputs


@pytest.mark.parametrize("cuda_backend", ["jit"], indirect=True)  # the order is the JIT runtime's
def test_results_do_not_depend_on_the_order_threads_run_in(cuda_backend):
    """Every kernel gives bit-identical results with the threads of a block run in the opposite
    order between barriers: no thread reads what another writes without a barrier between."""
    forward = _every_kernel()
    with cuda_on_cpu.schedule("reverse"):
        reverse = _every_kernel()
    for a, b in zip(forward, reverse):
        assert torch.equal(a, b)


def test_custom_ops_pass_opcheck(cuda_backend):
    """torch.library.opcheck on the JIT loader's custom ops: schema, fake tensors, autograd
    registration and AOT dispatch (the device test repeats it with CUDA tensors)."""
    gen = torch.Generator().manual_seed(8)
    x_t, eps, ref_t, eps_ref, z = (torch.randn(2, 3, 16, 16, generator=gen) for _ in range(5))
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    torch.library.opcheck(
        cuda_ops.exchange_update_cuda,
        (x_t, eps, ref_t, eps_ref, z, None, coefficients, 4.0, 3.0, False, False),
    )
    options = (300, 8, 1.8, 1e-6, "width", "spectral", "rms", False)
    torch.library.opcheck(cuda_ops.mani_noise_cuda, (x_t, z, None, *options))
    torch.library.opcheck(cuda_ops.mani_noise_cuda, (x_t, None, torch.tensor([4, 0]), *options))
    large = torch.rand(1, 2, 72, 80, generator=gen) * 2 - 1
    torch.library.opcheck(cuda_ops.mani_noise_cuda, (large, torch.randn_like(large), None, *options))
    grad = torch.randn_like(x_t)
    for noise_grad in (True, False):
        torch.library.opcheck(cuda_ops.mani_noise_backward_cuda, (grad, x_t, z, *options, noise_grad))
    for with_eps_ref in (eps_ref, None):
        torch.library.opcheck(
            cuda_ops.exchange_update_backward_cuda,
            (grad, x_t, eps, ref_t, with_eps_ref, coefficients, 4.0, 3.0, True, False),
        )


@pytest.mark.parametrize(
    "mani, shape",
    [(True, (2, 3, 16, 16)), (False, (1, 1, 31, 33)), (True, (1, 2, 72, 66))],
    ids=["mani-B2-C3-16", "freqpure-B1-C1-31x33", "mani-large-72x66"],
)
def test_sampler_on_the_cuda_kernels_equals_reference_given_the_same_noise(mani, shape, cuda_backend):
    torch.manual_seed(0)
    model = LinearEps(shape[1])
    config = PurifierConfig(
        rounds=(Round.from_total(40, 2), Round.from_total(20, 2)),
        mani=mani,
        amplitude_cut_range=4,
        phase_cut_range=3,
    )
    x = torch.rand(shape) * 2 - 1
    noise = [torch.randn(shape) for _ in range(10)]
    with torch.no_grad():
        expected = ref.purify_diffusion(model, x, config, RecordedNoise(noise))
        fast = purify_diffusion(model, x, config, RecordedNoise(noise), backend="cuda")
    assert (fast - expected).abs().max() <= 1e-4


def test_sanitizer_workload_runs_on_the_cuda_kernels(cuda_backend, capsys):
    """bench/sanitize_ops.py, the script compute-sanitizer runs on the GPU, on the cuda backend here,
    so a broken workload shows up before the device session."""
    sanitize_ops.main(["--backends", "cuda", "--device", "cpu"])
    assert "cuda: ran 6 shapes, forward and backward" in capsys.readouterr().out


@pytest.mark.parametrize("cuda_backend", ["aot"], indirect=True)
def test_aot_library_ops_pass_opcheck_and_equal_the_jit(cuda_backend, monkeypatch):
    """The library's six ops (built for the CPU) through opcheck, and equal, bit for bit, to the JIT
    loader's launches of the same kernels: the C++ glue passes every argument where it belongs."""
    from manipure_fast.ops.dft_tables import band_frequencies, band_masks, band_tables, half_spectrum_bands

    library = torch.ops.manipure_aot
    monkeypatch.setattr(cuda_ops, "_launch", cuda_on_cpu.launch)  # the JIT's launches, to compare
    gen = torch.Generator().manual_seed(11)
    x_t, eps, ref_t, eps_ref, z = (torch.randn(3, 2, 20, 24, generator=gen) for _ in range(5))
    kh, kw = band_frequencies(20, 4.0).numel(), band_frequencies(24, 4.0).numel()
    tables = (*band_tables(20, 4.0, kh, 20, x_t.device), *band_tables(24, 4.0, kw, 24, x_t.device))
    masks = band_masks(20, 24, 4.0, 3.0, kh, kw, x_t.device)
    coefficients = [0.9, 0.4, 0.95, 0.3, 0.92, 0.1, 0.05, 0.3]
    rng = torch.tensor([3, 2**33], dtype=torch.int64)
    cases = []
    for noise, state, project, real in ((z, None, False, False), (None, rng, True, True)):
        args = (x_t, eps, ref_t, eps_ref, noise, state, *tables, *masks, coefficients, project, real,
                cuda_ops.exchange_shared_bytes(20, 24, 4.0))  # fmt: skip
        cases.append((library.exchange_update, cuda_ops._jit_exchange_update, args))
    for with_eps_ref in (eps_ref, None):
        args = (z, x_t, eps, ref_t, with_eps_ref, *tables, *masks, coefficients, True, False,
                cuda_ops.exchange_backward_shared_bytes(20, 24, 4.0))  # fmt: skip
        cases.append((library.exchange_update_backward, cuda_ops._jit_exchange_update_backward, args))
    x = torch.rand(3, 2, 20, 24, generator=gen) * 2 - 1
    mani_tables = cuda_ops._mani_tables(x, 8, "width")
    for noise, state, normalize in ((z, None, 1), (None, rng, 2)):
        args = (x, noise, state, *mani_tables, 1.8, 1e-6, normalize == 2, normalize, 0.9, 0.4,
                cuda_ops.mani_shared_bytes(20, 24, 8))  # fmt: skip
        cases.append((library.mani_noise, cuda_ops._jit_mani_noise, args))
    for detach_map, noise_grad in ((False, True), (True, False)):
        args = (z, x, eps, *mani_tables, 1.8, 1e-6, False, 1, 0.9, 0.4, detach_map, noise_grad,
                cuda_ops.mani_backward_shared_bytes(20, 24, 8))  # fmt: skip
        cases.append((library.mani_noise_backward, cuda_ops._jit_mani_noise_backward, args))
    large = torch.rand(2, 3, 96, 80, generator=gen) * 2 - 1
    band, share = half_spectrum_bands(96, 80, 8, "width", large.device)
    spectrum = torch.view_as_real(torch.fft.rfft2(large)).contiguous()
    for weight_kernel in (False, True):
        args = (spectrum, band, share, 8, 1.8, 1e-6, weight_kernel)
        cases.append((library.mani_band_weights, cuda_ops._jit_mani_band_weights, args))
    shaped = torch.fft.irfft2(torch.fft.rfft2(large), s=(96, 80)).contiguous()
    for noise, state, normalize in ((torch.randn_like(large), None, 0), (None, rng, 1), (None, rng, 2)):
        args = (large, shaped, noise, state, normalize, 0.9, 0.4)
        cases.append((library.mani_inject, cuda_ops._jit_mani_inject, args))

    for op, jit, args in cases:
        torch.library.opcheck(op.default, args)
        built, launched = op(*args), jit(*args)
        for b, j in zip(*(r if isinstance(r, tuple) else (r,) for r in (built, launched))):
            assert torch.equal(b, j), op
