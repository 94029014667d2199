"""Fused Triton ops against the reference (under TRITON_INTERPRET=1 on the CPU; on a GPU when
one is present): forward on awkward shapes and input dtypes, both phase modes and reconstructions,
Philox noise statistics, gradients, poisoned outputs, and backend dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LinearEps, weight_off_the_clip_bounds

from manipure_fast import PurifierConfig, RecordedNoise, Round, ops
from manipure_fast import reference as ref
from manipure_fast.ops import triton_exchange, triton_mani
from manipure_fast.reference.schedule import noise_coefficients, step_coefficients
from manipure_fast.sampler import purify_diffusion

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}  # inputs are upcast; math is fp32


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Fresh kernel outputs start as NaN, so an element the kernel forgets to write fails."""

    def nan_like(t):
        return torch.full_like(t, float("nan"))

    monkeypatch.setattr(triton_exchange, "_empty_like", nan_like)
    monkeypatch.setattr(triton_mani, "_empty_like", nan_like)


def _case_id(b, c, h, w, dtype):
    return f"B{b}-C{c}-H{h}-W{w}-{dtype}"


def _within_eager_error(out, fast_inputs, fn, dtype):
    """STYLE.md: |kernel - fp64 ref| <= 2 |eager fp32 - fp64 ref| + atol; print worst index."""
    exact = fn(*[t.double() if isinstance(t, torch.Tensor) else t for t in fast_inputs])
    eager = fn(*[t.float() if isinstance(t, torch.Tensor) else t for t in fast_inputs])
    err = (out.double() - exact).abs()
    bound = 2 * (eager.double() - exact).abs().max() + ATOL[dtype]
    worst = torch.unravel_index(err.argmax(), err.shape)
    assert err.max() <= bound, f"max err {err.max():.3g} > {bound:.3g} at {tuple(int(i) for i in worst)}"
    assert torch.isfinite(out).all()


# Planes up to 32x32 take the whole-tile kernel.
MANI_SHAPES = [(1, 1, 31, 29), (2, 3, 28, 28), (1, 3, 32, 32), (2, 1, 16, 16), (1, 1, 17, 17), (1, 2, 9, 32)]
# Planes up to 64x64 take the streamed one-launch kernel: one side over 32, partial last row
# blocks, a 64x64 plane, and 64 rows by 17 columns.
MANI_ROWS_SHAPES = [(1, 1, 31, 33), (2, 1, 33, 40), (1, 2, 64, 64), (1, 3, 50, 37), (1, 1, 64, 17)]
# Larger planes take the large-plane path (rfft2, two fused kernels, irfft2): odd and even
# sides (the half spectrum's self-mirrored columns differ), non-square, and ImageNet's 256x256.
MANI_LARGE_SHAPES = [(1, 1, 65, 64), (2, 1, 67, 65), (1, 1, 96, 80), (1, 3, 256, 256)]


def test_mani_paths_by_plane_size(monkeypatch):
    """Each shape list above reaches the path it is meant to test."""
    taken = []
    for path, launch in list(triton_mani.FORWARD_LAUNCHERS.items()):
        monkeypatch.setitem(
            triton_mani.FORWARD_LAUNCHERS,
            path,
            lambda *a, _path=path, _launch=launch, **k: taken.append(_path) or _launch(*a, **k),
        )
    for shapes, path in [(MANI_SHAPES, "tile"), (MANI_ROWS_SHAPES, "rows"), (MANI_LARGE_SHAPES, "large")]:
        for shape in shapes:
            taken.clear()
            ops.mani_noise(
                torch.zeros(1, 1, *shape[-2:], device=DEVICE), 300, backend="triton", rng_state=_rng(0)
            )
            assert taken == [path], shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", MANI_SHAPES + MANI_ROWS_SHAPES + MANI_LARGE_SHAPES, ids=lambda s: "x".join(map(str, s))
)
def test_mani_noise_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(DTYPES[dtype]).to(DEVICE)
    z = torch.randn(shape, generator=gen).to(DEVICE)
    out = ops.mani_noise(x, 300, z, backend="triton")
    assert out.dtype == torch.float32
    _within_eager_error(out, [x.float(), z], lambda a, n: ref.mani_noise(a, 300, n), DTYPES[dtype])


# One plane for each path: whole tile (20x24), streamed (40x48) and large (72x81).
@pytest.mark.parametrize(
    "shape", [(2, 3, 20, 24), (2, 2, 40, 48), (2, 2, 72, 81)], ids=["tile", "rows", "large"]
)
@pytest.mark.parametrize(
    "options",
    [
        dict(band_mode="count"),
        dict(weight_map="kernel"),
        dict(normalize="max"),
        dict(normalize="none", n_bands=3, gamma=1.2),
        dict(n_bands=16, gamma=1.2),
    ],
    ids=["count", "kernel", "max", "none-3bands", "16bands"],
)
def test_mani_noise_options(options, shape):
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(DEVICE)
    z = torch.randn(shape, generator=gen).to(DEVICE)
    out = ops.mani_noise(x, 700, z, backend="triton", **options)
    _within_eager_error(out, [x, z], lambda a, n: ref.mani_noise(a, 700, n, **options), torch.float32)


@pytest.mark.parametrize("side", [16, 48, 70], ids=["tile", "rows", "large"])
@pytest.mark.parametrize("normalize", ["rms", "max"])
def test_mani_noise_zero_plane_is_uniform(normalize, side):
    x = torch.zeros(1, 2, side, side, device=DEVICE)
    x[0, 1] = torch.rand(side, side)
    z = torch.randn(1, 2, side, side, device=DEVICE)
    out = ops.mani_noise(x, 500, z, backend="triton", normalize=normalize)
    assert torch.allclose(out, ref.mani_noise(x, 500, z, normalize=normalize), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 40, 48), (1, 2, 66, 72)], ids=["rows", "large"])
def test_mani_noise_gradients_through_the_op_match_autograd(shape):
    """The streamed path's fused backward and the large-plane one, reached through
    ops.mani_noise, for x and the noise."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    noise = torch.randn(shape, generator=gen)
    weight = torch.randn(shape, generator=gen)

    def gradients(backend, dtype, device):
        x = x0.to(device, dtype).requires_grad_()
        z = noise.to(device, dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend)
        return torch.autograd.grad((out * weight.to(device, dtype)).sum(), (x, z))

    fused = gradients("triton", torch.float32, DEVICE)
    exact = gradients("reference", torch.float64, "cpu")
    for g_fast, g_exact in zip(fused, exact):
        torch.testing.assert_close(g_fast.cpu().double(), g_exact, rtol=0, atol=1e-4)


EXCHANGE_CASES = [
    ((2, 3, 32, 32), 10, 10, "replace", "abs", True),
    ((1, 1, 31, 33), 5, 3, "replace", "abs", True),
    ((2, 1, 28, 28), 4, 9, "project", "real", True),
    ((1, 3, 24, 40), 6, 4, "replace", "abs", False),
    ((1, 1, 64, 64), 10, 10, "project", "abs", True),
    ((1, 1, 65, 66), 3, 3, "replace", "abs", True),  # across the BLOCK_W 64 -> 128 switch
    ((1, 1, 20, 20), 16, 16, "replace", "real", True),  # cut beyond N/2: the band is every frequency
    ((1, 1, 256, 256), 10, 10, "replace", "abs", True),  # ImageNet plane, band-only DFT
    # Nyquist frequencies in the discs, real in both spectra: where their signs differ, "project"
    # rotates by -delta at a frequency and at its mirror, and Delta is not Hermitian (whole W band)
    ((2, 3, 16, 16), 10, 10, "project", "abs", True),
    ((1, 3, 20, 36), 10, 10, "project", "abs", True),  # the Nyquist on the H axis only
    ((1, 2, 21, 15), 12, 12, "project", "abs", True),  # odd sides, every frequency: the half W band
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    EXCHANGE_CASES,
    ids=lambda c: f"{'x'.join(map(str, c[0]))}-a{c[1]}-p{c[2]}-{c[3]}-{c[4]}-{'ref' if c[5] else 'input'}",
)
def test_exchange_update_matches_reference(case, dtype):
    shape, a, p, mode, recon, has_ref = case
    if shape[-1] == 256 and dtype != "fp32":
        pytest.skip("one dtype is enough for the large plane under the interpreter")
    gen = torch.Generator().manual_seed(shape[-1] + a)
    dt = DTYPES[dtype]
    x_t, eps, ref_t, eps_ref, z = (torch.randn(shape, generator=gen) for _ in range(5))
    x_t, eps, ref_t, eps_ref = (t.to(dt).to(DEVICE) for t in (x_t, eps * 0.8, ref_t, eps_ref * 0.8))
    z = z.to(DEVICE)
    if not has_ref:
        eps_ref, ref_t = None, ref_t.clamp(-1, 1)
    step = step_coefficients(49, 39, eta=1.0)
    options = dict(amplitude_cut_range=a, phase_cut_range=p, phase_mode=mode, reconstruct=recon)
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, step=step, backend="triton", **options)

    def reference(xt, e, r, er, n):
        return ops.exchange_update(xt, e, r, er, n, step=step, backend="reference", **options)

    inputs = [x_t.float(), eps.float(), ref_t.float(), None if eps_ref is None else eps_ref.float(), z]
    _within_eager_error(out, inputs, reference, dt)


def test_exchange_update_last_step_returns_exchanged_x0():
    gen = torch.Generator().manual_seed(3)
    x_t, eps, ref_t, eps_ref, z = (torch.randn(1, 3, 16, 16, generator=gen).to(DEVICE) for _ in range(5))
    step = step_coefficients(9, -1, eta=1.0)
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z * 100, step=step, backend="triton")
    x0 = (x_t - eps * step.sqrt_one_minus_abar) / step.sqrt_abar
    from manipure_fast.reference.schedule import noise_coefficients

    rc = noise_coefficients(50)
    expected = ref.exchange((ref_t - eps_ref * rc.noise) / rc.signal, x0)
    assert torch.allclose(out, expected, atol=1e-5)


# -- Philox noise --------------------------------------------------------------------------------


def _rng(seed):
    return torch.tensor([seed, 0], dtype=torch.int64, device=DEVICE)


def _philox_noise(seed, shape=(4, 3, 32, 32), calls=1):
    """The noise the exchange kernel draws: with s_next = 0, c1 = 1, c2 = 0 the output is z."""
    from manipure_fast.reference.schedule import StepCoefficients

    step = StepCoefficients(
        t=0, t_next=0, sqrt_abar=1.0, sqrt_one_minus_abar=0.0, sqrt_abar_next=0.0, c1=1.0, c2=0.0
    )
    x = torch.zeros(shape, device=DEVICE)
    state = _rng(seed)
    return [
        ops.exchange_update(x, x, x, None, rng_state=state, step=step, backend="triton") for _ in range(calls)
    ], state


def test_philox_noise_statistics_and_reproducibility():
    (z1, z2), state = _philox_noise(7, calls=2)
    assert state[1].item() == 2 * z1.numel()  # offset advanced on the device
    for z in (z1, z2):
        assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    assert not torch.equal(z1, z2)  # successive calls draw fresh noise
    planes = z1.flatten(2).flatten(0, 1)
    corr = torch.corrcoef(planes) - torch.eye(planes.shape[0], device=DEVICE)
    assert corr.abs().max() < 0.2  # planes independent
    (again,), _ = _philox_noise(7)
    (other,), _ = _philox_noise(8)
    assert torch.equal(z1, again) and not torch.equal(z1, other)


def test_mani_philox_path_matches_reference_with_the_stored_noise():
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).to(DEVICE).requires_grad_()
    state = _rng(11)
    out = ops.mani_noise(x, 400, rng_state=state, backend="triton")
    assert state[1].item() == x.numel()
    # The backward used the stored noise: gradients agree with the reference given that noise.
    (g,) = torch.autograd.grad(out.sum(), x)
    params = triton_mani.ManiParams(400)
    _, z = triton_mani.launch_mani_noise(x.detach(), None, _rng(11), params, store_noise=True)
    assert torch.allclose(out, ref.mani_noise(x.detach(), 400, z), atol=1e-5)
    x2 = x.detach().requires_grad_()
    (g_ref,) = torch.autograd.grad(ref.mani_noise(x2, 400, z).sum(), x2)
    assert torch.allclose(g, g_ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 2, 40, 36), (1, 2, 72, 68)], ids=["rows", "large"])
def test_mani_philox_draws_the_exchange_kernels_counters(shape):
    """A mid-grey plane has W = 1, so the output is sqrt(1 - abar) z: the same normals the
    exchange kernel draws at the same seed and offset, and the stored noise the backward uses.
    Two calls draw fresh noise."""
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    state = _rng(5)
    out = ops.mani_noise(x, 400, rng_state=state, backend="triton")
    assert state[1].item() == x.numel()
    (z,), _ = _philox_noise(5, shape=shape)
    coef = noise_coefficients(400)
    torch.testing.assert_close(out.detach(), coef.noise * z, rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.full_like(g, coef.signal), rtol=0, atol=1e-6)
    again = ops.mani_noise(x.detach(), 400, rng_state=state, backend="triton")
    assert not torch.equal(again, out.detach())


def test_noise_arguments_are_checked():
    x = torch.zeros(1, 1, 8, 8, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one of noise"):
        ops.mani_noise(x, 10, backend="triton")
    with pytest.raises(ValueError, match="needs the triton or cuda backend"):
        ops.mani_noise(x, 10, rng_state=_rng(0), backend="reference")
    with pytest.raises(ValueError, match="int64 \\[2\\]"):
        ops.mani_noise(x, 10, rng_state=torch.zeros(3, dtype=torch.int64), backend="triton")
    with pytest.raises(ValueError, match="noise has shape"):
        ops.mani_noise(x, 10, torch.zeros(1, 1, 8, 9), backend="triton")


# -- gradients -------------------------------------------------------------------------------------


def test_exchange_update_gradients_match_reference():
    gen = torch.Generator().manual_seed(5)
    inputs = [torch.randn(1, 2, 12, 10, generator=gen).to(DEVICE) for _ in range(4)]
    z = torch.randn(1, 2, 12, 10, generator=gen).to(DEVICE)
    step = step_coefficients(29, 19, eta=1.0)
    grads = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = ops.exchange_update(
            *leaves,
            z,
            step=step,
            amplitude_cut_range=3,
            phase_cut_range=2,
            phase_mode="project",
            backend=backend,
        )
        grads.append(
            torch.autograd.grad(
                (out * torch.linspace(0, 1, out.numel(), device=DEVICE).view_as(out)).sum(), leaves
            )
        )
    for g_fast, g_ref in zip(*grads):
        assert torch.allclose(g_fast, g_ref, atol=1e-5)


BACKWARD_CASES = [
    # (B, C, H, W, amplitude cut, phase cut, phase mode, reconstruct, explicit eps_ref)
    (1, 3, 31, 33, 10, 10, "replace", "abs", True),
    (2, 1, 28, 28, 4, 7, "replace", "real", True),
    (1, 3, 32, 32, 6, 3, "project", "abs", False),
    (2, 2, 16, 20, 3, 5, "project", "real", True),
    (1, 1, 64, 64, 10, 10, "project", "abs", True),
    (1, 1, 9, 40, 30, 30, "replace", "abs", True),  # the band covers every frequency
    (1, 2, 33, 80, 5, 4, "project", "real", True),  # two 32-column chunks, then a partial one
    (1, 1, 256, 256, 10, 10, "replace", "abs", True),  # ImageNet planes: 16-row tiles
    (1, 2, 16, 16, 10, 10, "project", "abs", True),  # Nyquist frequencies in the discs: whole W band
    (1, 1, 21, 15, 12, 12, "replace", "abs", True),  # odd sides, every frequency: the half W band
]


@pytest.mark.parametrize(
    "case", BACKWARD_CASES, ids=lambda c: f"B{c[0]}-C{c[1]}-H{c[2]}-W{c[3]}-R{c[4]},{c[5]}-{c[6]}-{c[7]}"
)
def test_fused_exchange_backward_matches_autograd(case):
    """The fused backward kernel against autograd through the reference (in fp64), within twice
    the fp32 reference's own gradient error plus a small atol (STYLE.md); the inputs are wide
    enough that both [0, 255] clamps cut some pixels, so their masks are exercised too. The few
    output pixels that the exact result puts on a clip bound carry no weight
    (conftest.weight_off_the_clip_bounds)."""
    b, c, h, w, amp_cut, phase_cut, phase_mode, reconstruct, with_eps_ref = case
    options = dict(amplitude_cut_range=amp_cut, phase_cut_range=phase_cut, phase_mode=phase_mode,
                   reconstruct=reconstruct)  # fmt: skip
    _assert_fused_exchange_backward((b, c, h, w), options, with_eps_ref)


def _assert_fused_exchange_backward(shape, exchange_options, with_eps_ref=True):
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(h * w + b)
    inputs = [torch.randn(b, c, h, w, generator=gen) * 0.6 for _ in range(4)]
    if not with_eps_ref:
        inputs[3] = None
    noise = torch.randn(b, c, h, w, generator=gen)
    weight = torch.randn(b, c, h, w, generator=gen)
    options = dict(step=step_coefficients(199, 179, eta=1.0), **exchange_options)
    weight = weight_off_the_clip_bounds(weight, [*inputs, noise], options)

    def gradients(backend, dtype, device):
        leaves = [None if t is None else t.to(device, dtype).requires_grad_() for t in inputs]
        z = noise.to(device, dtype).requires_grad_()
        out = ops.exchange_update(*leaves, z, backend=backend, **options)
        present = [t for t in leaves if t is not None] + [z]
        return torch.autograd.grad((out * weight.to(device, dtype)).sum(), present)

    fused = gradients("triton", torch.float32, DEVICE)
    exact = gradients("reference", torch.float64, "cpu")
    eager = gradients("reference", torch.float32, "cpu")
    names = ["x_t", "eps", "ref_t"] + (["eps_ref"] if with_eps_ref else []) + ["noise"]
    # atol on the scale of all gradients: where the band covers every frequency, x_t's exact
    # gradient is zero, and the kernel's is two cancelling fp32 paths.
    scale = max(float(g.abs().max()) for g in exact)
    for name, g_fast, g_exact, g_eager in zip(names, fused, exact, eager):
        err = (g_fast.cpu().double() - g_exact).abs()
        bound = 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale
        worst = divmod(int(err.argmax()), w)
        assert err.max() <= bound, f"{name}: max err {err.max():.3g} > {bound:.3g} at flat row/col {worst}"


# "project" with delta past pi clips nothing, as torch's clamp of a difference in [-pi, pi) does
# (the kernels' cosine test would clip again past pi), and infinite cut ranges exchange every
# coefficient (the kernels size their bands from H + W). 12x10 takes the whole W band (Nyquist
# frequencies in the band), 11x13 the half band.
UNBOUNDED_OPTIONS = [
    dict(phase_mode="project", delta=4.0, amplitude_cut_range=6, phase_cut_range=6),
    dict(phase_mode="project", delta=math.inf, amplitude_cut_range=6, phase_cut_range=6, reconstruct="real"),
    dict(phase_mode="project", delta=math.pi, amplitude_cut_range=math.inf, phase_cut_range=math.inf),
    dict(phase_mode="project", amplitude_cut_range=math.inf, phase_cut_range=2),
]


@pytest.mark.parametrize("shape", [(1, 2, 12, 10), (2, 1, 11, 13)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "options", UNBOUNDED_OPTIONS, ids=["delta4", "delta-inf", "delta-pi-cuts-inf", "amp-cut-inf"]
)
def test_exchange_with_delta_past_pi_and_infinite_cuts(options, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x_t, eps, ref_t, eps_ref, z = (torch.randn(shape, generator=gen).to(DEVICE) for _ in range(5))
    step = step_coefficients(99, 89, eta=1.0)
    out = ops.exchange_update(x_t, eps, ref_t, eps_ref, z, step=step, backend="triton", **options)

    def reference(*tensors):
        return ops.exchange_update(*tensors, step=step, backend="reference", **options)

    _within_eager_error(out, [x_t, eps, ref_t, eps_ref, z], reference, torch.float32)
    _assert_fused_exchange_backward(shape, options)


@pytest.mark.parametrize("in_kernel_noise", [False, True], ids=["given-noise", "philox"])
def test_ops_give_the_same_output_with_and_without_autograd(in_kernel_noise):
    """Untracked calls launch the kernels without the autograd Function (less host time); their
    outputs must be the Function's bit for bit, with the same Philox draws and offset advance."""
    gen = torch.Generator().manual_seed(11)
    x_t, eps, ref_t, eps_ref, z = (torch.randn(2, 3, 20, 24, generator=gen).to(DEVICE) for _ in range(5))
    x = x_t.clamp(-1, 1)
    step = step_coefficients(49, 39, eta=1.0)
    outputs = []
    for tracked in (False, True):
        leaf = x_t.clone().requires_grad_(tracked)
        mani_leaf = x.clone().requires_grad_(tracked)
        states = (_rng(5), _rng(6))
        noise = [dict(rng_state=state) if in_kernel_noise else dict(noise=z) for state in states]
        exchanged = ops.exchange_update(leaf, eps, ref_t, eps_ref, step=step, backend="triton", **noise[0])
        renoised = ops.mani_noise(mani_leaf, 300, backend="triton", **noise[1])
        assert exchanged.requires_grad == renoised.requires_grad == tracked
        outputs.append((exchanged.detach(), renoised.detach(), *states))
    for untracked, tracked in zip(*outputs):
        assert torch.equal(untracked, tracked)


def test_fused_exchange_backward_writes_every_gradient():
    """With NaN-poisoned outputs (the autouse fixture), every gradient element must be written."""
    x_t, eps, ref_t, eps_ref = (torch.randn(3, 2, 13, 17, device=DEVICE) for _ in range(4))
    grad = torch.randn(3, 2, 13, 17, device=DEVICE)
    params = triton_exchange.ExchangeParams(0.9, 0.43, 0.99, 0.1, 0.92, 0.2, 0.1)
    for eps_ref_arg in (eps_ref, None):
        grads = triton_exchange.launch_exchange_update_backward(grad, x_t, eps, ref_t, eps_ref_arg, params)
        for g in grads:
            assert g is None or torch.isfinite(g).all()


MANI_BACKWARD_CASES = [
    # (B, C, H, W, options)
    (1, 3, 31, 29, {}),
    (2, 1, 28, 28, dict(band_mode="count")),
    (1, 3, 32, 32, dict(weight_map="kernel")),
    (2, 2, 16, 20, dict(normalize="max", n_bands=5)),
    (1, 1, 32, 32, dict(normalize="none", gamma=1.2)),
    (1, 2, 12, 16, dict(detach_map=True)),
    (1, 2, 24, 32, {}),  # W = 32: the Nyquist column apart from the half spectrum
    # the streamed kernels (33 to 64): one side over 32, partial row blocks, every option
    (1, 2, 64, 64, {}),
    (2, 1, 33, 40, dict(band_mode="count")),
    (1, 1, 50, 37, dict(weight_map="kernel")),
    (1, 1, 64, 48, dict(normalize="max", n_bands=5)),
    (1, 1, 40, 40, dict(normalize="none", gamma=1.2)),
    (1, 2, 36, 34, dict(detach_map=True)),
    # the large-plane path (above 64): odd and even widths, every option
    (1, 2, 66, 72, {}),
    (2, 1, 70, 68, dict(band_mode="count", weight_map="kernel")),
    (1, 1, 67, 65, dict(normalize="max")),
    (1, 1, 65, 64, dict(normalize="none", n_bands=3, gamma=1.2)),
    (1, 1, 72, 81, dict(n_bands=16)),
    (1, 2, 66, 70, dict(detach_map=True)),
]
assert {triton_mani.mani_path(h, w) for _, _, h, w, _ in MANI_BACKWARD_CASES} == set(
    triton_mani.BACKWARD_LAUNCHERS
)


@pytest.mark.parametrize(
    "case",
    MANI_BACKWARD_CASES,
    ids=lambda c: f"B{c[0]}-C{c[1]}-H{c[2]}-W{c[3]}-" + "-".join(map(str, c[4].values())),
)
def test_fused_mani_backward_matches_autograd(case):
    """The fused MANI backwards (whole tile up to 32x32, streamed up to 64x64, cuFFT and two
    kernels above) against autograd through the reference in fp64, for x (through the intensity
    map) and the noise, within twice the fp32 reference's own error (STYLE.md)."""
    b, c, h, w, options = case
    gen = torch.Generator().manual_seed(h * w + b)
    x0 = torch.rand(b, c, h, w, generator=gen) * 2 - 1
    noise = torch.randn(b, c, h, w, generator=gen)
    weight = torch.randn(b, c, h, w, generator=gen)

    def gradients(backend, dtype, device):
        x = x0.to(device, dtype).requires_grad_()
        z = noise.to(device, dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, **options)
        return torch.autograd.grad((out * weight.to(device, dtype)).sum(), (x, z))

    fused = gradients("triton", torch.float32, DEVICE)
    exact = gradients("reference", torch.float64, "cpu")
    eager = gradients("reference", torch.float32, "cpu")
    scale = max(float(g.abs().max()) for g in exact)
    for name, g_fast, g_exact, g_eager in zip(("x", "noise"), fused, exact, eager):
        err = (g_fast.cpu().double() - g_exact).abs()
        bound = 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale
        assert err.max() <= bound, (
            f"{name}: max err {err.max():.3g} > {bound:.3g} at {divmod(int(err.argmax()), w)}"
        )


@pytest.mark.parametrize("side", [16, 40, 70], ids=["tile", "rows", "large"])
def test_detached_map_without_a_noise_gradient_gives_the_direct_term(side):
    """mani_detach with noise that needs no gradient (the purifier's case): g_x = sqrt(abar) grad,
    as autograd through the reference gives."""
    x = (torch.rand(1, 2, side, side) * 2 - 1).to(DEVICE).requires_grad_()
    z = torch.randn(1, 2, side, side, device=DEVICE)
    weight = torch.randn(1, 2, side, side, device=DEVICE)
    out = ops.mani_noise(x, 300, z, backend="triton", detach_map=True)
    (g,) = torch.autograd.grad(out, x, weight)
    torch.testing.assert_close(g, noise_coefficients(300).signal * weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", [16, 40, 70], ids=["tile", "rows", "large"])
def test_fused_mani_backward_on_a_constant_plane_has_only_the_direct_term(side):
    """A mid-grey plane has an all-zero spectrum: W = 1, and torch's |.| and pow give no map gradient."""
    x = torch.zeros(1, 2, side, side, device=DEVICE, requires_grad=True)
    z = torch.randn(1, 2, side, side, device=DEVICE)
    (g,) = torch.autograd.grad(ops.mani_noise(x, 300, z, backend="triton").sum(), x)
    x_ref = torch.zeros(1, 2, side, side, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref.mani_noise(x_ref, 300, z.cpu().double()).sum(), x_ref)
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=0, atol=1e-6)


def test_fused_mani_backward_shares_the_maximum_between_tied_pixels():
    """A constant plane that is not mid-grey has only the DC coefficient, and the large-plane path's
    power-of-two FFTs keep the rest exactly zero, so all H*W pixels tie at the maximum of |Y|.
    torch's amax shares the scale's gradient between them; counting one maximum (or none) moves
    g_Y's mean, the DC. eps0 = 1000 keeps the DC's band weight comparable to the empty bands'
    (1 / eps0), so that shows in the gradient (tests/test_cuda_ops.py checks the CUDA paths so)."""
    shape = (1, 2, 128, 128)
    gen = torch.Generator().manual_seed(128)
    x0, noise, weight = (
        torch.full(shape, 0.37),
        torch.randn(shape, generator=gen),
        torch.randn(shape, generator=gen),
    )
    assert triton_mani.mani_path(128, 128) == "large"
    assert ref.intensity_map(x0.double(), normalize="none", eps0=1000.0).unique().numel() == 1

    def gradients(backend, dtype, device):
        x = x0.to(device, dtype).requires_grad_()
        z = noise.to(device, dtype).requires_grad_()
        out = ops.mani_noise(x, 600, z, backend=backend, normalize="max", eps0=1000.0)
        return torch.autograd.grad((out * weight.to(device, dtype)).sum(), (x, z))

    fused = gradients("triton", torch.float32, DEVICE)
    exact = gradients("reference", torch.float64, "cpu")
    eager = gradients("reference", torch.float32, "cpu")
    scale = max(float(g.abs().max()) for g in exact)
    for g_fast, g_exact, g_eager in zip(fused, exact, eager):
        bound = 2 * (g_eager.double() - g_exact).abs().max() + 1e-5 * scale
        assert (g_fast.cpu().double() - g_exact).abs().max() <= bound


# -- dispatch and the sampler ------------------------------------------------------------------------


def test_backend_selection():
    small = torch.zeros(1, 1, 32, 32, device=DEVICE)
    big = torch.zeros(1, 1, 96, 96, device=DEVICE)
    huge = torch.zeros(1, 1, 300, 300, device=DEVICE)
    assert ops.select_backend("mani_noise", small) == "triton"
    assert ops.select_backend("mani_noise", big) == "triton"  # the large-plane path
    assert ops.select_backend("exchange_update", huge) == "reference"  # auto falls back quietly
    with pytest.raises(ValueError, match="handles planes up to 256x256"):
        ops.select_backend("exchange_update", huge, "triton")
    with pytest.raises(ValueError, match="not torch.float64"):
        ops.select_backend("exchange_update", small.double(), "triton")
    with ops.use_backend("reference"):
        assert ops.select_backend("mani_noise", small) == "reference"
        assert ops.select_backend("mani_noise", small, "triton") == "triton"  # argument wins
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.select_backend("mani_noise", small, "cuda-graphs")


def test_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("MANIPURE_BACKEND", "reference")
    assert ops.select_backend("exchange_update", torch.zeros(1, 1, 8, 8, device=DEVICE)) == "reference"


@pytest.mark.parametrize(
    "mani, shape",
    [(True, (2, 3, 16, 16)), (False, (1, 1, 31, 33)), (True, (1, 1, 48, 40)), (True, (1, 2, 72, 66))],
    ids=["mani-B2-C3-16", "freqpure-B1-C1-31x33", "mani-B1-C1-48x40", "mani-B1-C2-72x66"],
)
def test_sampler_on_triton_equals_reference_given_the_same_noise(mani, shape):
    torch.manual_seed(0)
    model = LinearEps(shape[1]).to(DEVICE)
    config = PurifierConfig(
        rounds=(Round.from_total(40, 2), Round.from_total(20, 2)),
        mani=mani,
        amplitude_cut_range=4,
        phase_cut_range=3,
    )
    x = (torch.rand(shape) * 2 - 1).to(DEVICE)
    noise = [torch.randn(shape).to(DEVICE) for _ in range(10)]
    with torch.no_grad():
        expected = ref.purify_diffusion(model, x, config, RecordedNoise(noise))
        fast = purify_diffusion(model, x, config, RecordedNoise(noise), backend="triton")
        same = purify_diffusion(model, x, config, RecordedNoise(noise), backend="reference")
    assert torch.equal(same, expected)
    assert (fast - expected).abs().max() <= 1e-4
