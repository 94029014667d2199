"""Issue #4's device matrix for the triton backend: planes 31x33, 28x28, 32x32, 64x64 and
256x256, C in {1, 3}, B in {1, 7, 64}, fp32 and bf16 inputs; forward, backward, and capture and
replay in a CUDA graph, for both fused ops.

The whole matrix runs on a CUDA device. Without one, only its smallest case runs, under the
Triton interpreter, so that CI checks the tests themselves; the graph tests need CUDA.

Bounds (STYLE.md): against the reference in float64, within twice eager float32 PyTorch's own
error on the same device, plus a small absolute term.
"""

from __future__ import annotations

import pytest
import torch
from conftest import weight_off_the_clip_bounds

from manipure_fast import ops
from manipure_fast.reference.schedule import step_coefficients

pytest.importorskip("triton")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
SIDES = [(31, 33), (28, 28), (32, 32), (64, 64), (256, 256)]
MATRIX = [(b, c, h, w) for (h, w) in SIDES for c in (1, 3) for b in (1, 7, 64)]
CPU_CASE = (1, 1, 31, 33)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STEP = step_coefficients(99, 89, eta=1.0)
EXCHANGE_OPTIONS = dict(step=STEP, amplitude_cut_range=6, phase_cut_range=4)


def _shapes(matrix=MATRIX):
    """The matrix on a GPU; its smallest case on the CPU."""
    return [
        pytest.param(s, id="x".join(map(str, s)), marks=[] if ON_GPU or s == CPU_CASE else [_needs_gpu])
        for s in matrix
    ]


_needs_gpu = pytest.mark.skip(
    reason="the device matrix runs on a CUDA device; the CPU runs its smallest case"
)
cuda_only = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")


def _inputs(shape, count, seed):
    gen = torch.Generator(DEVICE).manual_seed(seed)
    return [torch.randn(shape, generator=gen, device=DEVICE) for _ in range(count)]


def _assert_within_eager_error(name, fast, exact, eager, scale=1.0):
    err = (fast.double() - exact).abs()
    bound = 2 * (eager.double() - exact).abs().max() + 1e-5 * scale
    assert torch.isfinite(fast).all(), f"{name}: non-finite values"
    assert err.max() <= bound, f"{name}: max err {err.max():.3g} > {bound:.3g}"


def _mani(x, z, backend="triton"):
    return ops.mani_noise(x, 300, z, backend=backend)


def _exchange(x_t, eps, ref_t, eps_ref, z, backend="triton"):
    return ops.exchange_update(x_t, eps, ref_t, eps_ref, z, backend=backend, **EXCHANGE_OPTIONS)


# -- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", _shapes())
def test_mani_noise_forward(shape, dtype):
    x, z = _inputs(shape, 2, sum(shape))
    x = x.clamp(-1, 1).to(DTYPES[dtype])
    out = _mani(x, z)
    assert out.dtype == torch.float32 and out.shape == shape
    exact = _mani(x.double(), z.double(), "reference")
    _assert_within_eager_error("out", out, exact, _mani(x.float(), z, "reference"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", _shapes())
def test_exchange_update_forward(shape, dtype):
    x_t, eps, ref_t, eps_ref, z = _inputs(shape, 5, sum(shape) + 1)
    x_t, eps = x_t.to(DTYPES[dtype]), (0.8 * eps).to(DTYPES[dtype])
    out = _exchange(x_t, eps, ref_t, eps_ref, z)
    assert out.dtype == torch.float32 and out.shape == shape
    exact = _exchange(*(t.double() for t in (x_t, eps, ref_t, eps_ref, z)), backend="reference")
    eager = _exchange(*(t.float() for t in (x_t, eps, ref_t, eps_ref, z)), backend="reference")
    _assert_within_eager_error("out", out, exact, eager)


# -- backward ------------------------------------------------------------------------------------


def _gradients(op, tensors, weight, backend, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in tensors]
    out = op(*leaves, backend=backend)
    return torch.autograd.grad((out * weight.to(dtype)).sum(), leaves)


def _check_gradients(op, tensors, weight, names):
    fused = _gradients(op, tensors, weight, "triton", torch.float32)
    exact = _gradients(op, tensors, weight, "reference", torch.float64)
    eager = _gradients(op, tensors, weight, "reference", torch.float32)
    scale = max(float(g.abs().max()) for g in exact)
    for name, g_fast, g_exact, g_eager in zip(names, fused, exact, eager):
        _assert_within_eager_error(name, g_fast, g_exact, g_eager, scale)


@pytest.mark.parametrize("shape", _shapes())
def test_mani_noise_backward(shape):
    x, z, weight = _inputs(shape, 3, sum(shape) + 2)
    _check_gradients(_mani, [x.clamp(-1, 1), z], weight, ["x", "noise"])


@pytest.mark.parametrize("shape", _shapes())
def test_exchange_update_backward(shape):
    x_t, eps, ref_t, eps_ref, z, weight = _inputs(shape, 6, sum(shape) + 3)
    inputs = [x_t, 0.8 * eps, ref_t, 0.8 * eps_ref, z]
    weight = weight_off_the_clip_bounds(weight, inputs, EXCHANGE_OPTIONS)
    _check_gradients(_exchange, inputs, weight, ["x_t", "eps", "ref_t", "eps_ref", "noise"])


@pytest.mark.parametrize("shape", _shapes([(7, 3, 32, 32), (1, 3, 256, 256)]) + _shapes([CPU_CASE]))
def test_bf16_inputs_get_bf16_gradients_of_the_fp32_op(shape):
    """bf16 leaves: the op upcasts, so their gradients are the fp32 op's, rounded to bf16."""
    x, z, weight = _inputs(shape, 3, 7)
    x = x.clamp(-1, 1).to(torch.bfloat16)
    leaf = x.clone().requires_grad_()
    (g_bf16,) = torch.autograd.grad((_mani(leaf, z) * weight).sum(), leaf)
    leaf32 = x.float().requires_grad_()
    (g_fp32,) = torch.autograd.grad((_mani(leaf32, z) * weight).sum(), leaf32)
    assert g_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(g_bf16, g_fp32.to(torch.bfloat16), rtol=0, atol=0)


# -- CUDA graphs ---------------------------------------------------------------------------------


def _capture(fn):
    """Warm ``fn`` up on a side stream (the kernels compile there), then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@cuda_only
@pytest.mark.parametrize("op", ["mani_noise", "exchange_update"])
@pytest.mark.parametrize("shape", _shapes())
def test_graph_replay_draws_fresh_noise_and_reproduces_eager(shape, op):
    """In-kernel Philox noise from a device seed/offset: each replay advances the offset and draws
    fresh noise, and a replay from a given state equals the eager call from that state."""
    x_t, eps, ref_t, eps_ref = _inputs(shape, 4, sum(shape) + 4)
    state = torch.tensor([2024, 0], dtype=torch.int64, device=DEVICE)

    def call():
        if op == "mani_noise":
            return ops.mani_noise(x_t.clamp(-1, 1), 300, rng_state=state, backend="triton")
        return ops.exchange_update(
            x_t, eps, ref_t, eps_ref, rng_state=state, backend="triton", **EXCHANGE_OPTIONS
        )

    graph, out = _capture(call)
    state.copy_(torch.tensor([2024, 0]))
    eager = call().clone()
    state.copy_(torch.tensor([2024, 0]))
    graph.replay()
    first = out.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert int(state[1]) == 2 * x_t.numel()
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    assert not torch.equal(out, first)
