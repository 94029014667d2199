"""How far the Triton ops move from the reference if their dots ran on the tensor cores, as
``input_precision="tf32x3"`` or ``"tf32"``, measured on the CPU (docs/kernels.md, "Precision").

    python bench/precision_emulation.py            # bench/results/precision-emulation-<date>.json
    python bench/precision_emulation.py --smoke    # small planes, writes nothing

T7 asks for fp32 outputs within 1e-5 of the reference. The kernels ship ``ieee`` dots, which are
SIMT FMA loops, and at CIFAR those cannot meet T1 or T3 (a count in docs/kernels.md). ``tf32x3``
would put the dots on the tensor cores; whether it is accurate enough does not need a GPU to
answer. The Triton interpreter computes every ``tl.dot`` in fp32 whatever its precision; here
it computes them as the NVIDIA backend lowers them instead:

- ``tf32``: one tensor-core product. Each operand keeps the top 19 bits of its fp32 word (the
  tensor core ignores the low 13 mantissa bits of an fp32 register); products accumulate in fp32.
- ``tf32x3``: Triton's F32DotTC rewrite. ``big = cvt.rna.tf32.f32(a)`` (nearest, ties away from
  zero), ``small = a - big``; the sum of ``small_a @ big_b`` and ``big_a @ small_b`` (NaNs
  zeroed), then ``big_a @ big_b`` added to it, each a ``tf32`` product as above.

What the emulation leaves out: the tensor core's own accumulation, which aligns and truncates
rather than rounding each addition (numpy's fp32 sums round). That changes the last bit or two
of a sum, on the scale of the ``ieee`` kernels' own rounding, not the ``tf32`` operand error that
sets these results. So these rows rank the precisions; the GPU's ``bench/tune_triton.py`` rows
(each variant's largest difference from the ``ieee`` output) are the measurement.

Each op runs with every dot of its kernels at one precision, on the CPU under the interpreter,
and is compared with the reference in fp64 (forward: the largest absolute error of the output;
backward: of each gradient, over the largest exact gradient) beside the fp32 reference's own
error. With ``../shared/fixtures`` present, the golden purifications (SPEC §4) run end to end on
the ``triton`` backend too: that is T7 as stated.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ops import provenance, write_rows  # noqa: E402
from bench.tune_triton import overriding  # noqa: E402
from manipure_fast import RecordedNoise, ops  # noqa: E402
from manipure_fast.ops import triton_mani  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

PRECISIONS = ("ieee", "tf32x3", "tf32")
T7_ATOL = 1e-5  # PERFORMANCE.md T7
# Every kernel module under manipure_fast.kernels.triton with dots, and its kernels.
DOT_KERNELS = {
    "exchange_update": ("exchange_update_kernel",),
    "exchange_update_backward": ("exchange_update_backward_kernel",),
    "mani_noise": ("mani_noise_kernel",),
    "mani_noise_backward": ("mani_noise_backward_kernel",),
    "mani_noise_rows": ("mani_noise_rows_kernel",),
    "mani_noise_rows_backward": ("mani_noise_rows_backward_kernel",),
}
_TF32_DROPPED_BITS = np.uint32(0x1FFF)  # fp32 keeps 23 mantissa bits, TF32 10


def tf32_round(a: np.ndarray) -> np.ndarray:
    """``cvt.rna.tf32.f32``: fp32 to the nearest TF32 value, ties away from zero (in fp32)."""
    bits = a.astype(np.float32).view(np.uint32)
    finite = np.isfinite(a)
    rounded = (bits + np.uint32(0x1000)) & ~_TF32_DROPPED_BITS  # sign-magnitude: the carry rounds |a| up
    return np.where(finite, rounded, bits).view(np.float32)


def tf32_truncate(a: np.ndarray) -> np.ndarray:
    """An fp32 register read as a TF32 tensor-core operand: the low 13 mantissa bits ignored."""
    return (a.astype(np.float32).view(np.uint32) & ~_TF32_DROPPED_BITS).view(np.float32)


def tf32_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(tf32_truncate(a), tf32_truncate(b), dtype=np.float32)


def tf32x3_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a_big, b_big = tf32_round(a), tf32_round(b)
    a_small, b_small = a - a_big, b - b_big
    small = tf32_dot(a_small, b_big) + tf32_dot(a_big, b_small)
    return tf32_dot(a_big, b_big) + np.where(np.isnan(small), np.float32(0), small)


@contextlib.contextmanager
def emulated_tensor_core_dots() -> Iterator[None]:
    """Inside, the interpreter computes fp32 ``tl.dot``s of ``input_precision`` "tf32" and
    "tf32x3" as the tensor cores would (above); "ieee" dots are untouched."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    emulated = {ir.INPUT_PRECISION.TF32: tf32_dot, ir.INPUT_PRECISION.TF32x3: tf32x3_dot}
    original = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        dot = emulated.get(input_precision)
        if dot is None or not (a.data.dtype == b.data.dtype == np.float32):
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)
        return interpreter.TensorHandle(dot(a.data, b.data) + d.data, d.dtype.scalar)

    interpreter.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.create_dot = original


@contextlib.contextmanager
def dot_precision(precision: str) -> Iterator[None]:
    """Every dot of every Triton kernel at ``precision``, emulated where it is not "ieee"."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(emulated_tensor_core_dots())
        for module, kernels in DOT_KERNELS.items():
            stack.enter_context(overriding(module, kernels, dict(PRECISION=precision)))
        yield


@dataclass
class Case:
    op: str
    direction: str
    label: str
    shape: tuple
    # run(backend, dtype) -> the output (forward) or the gradients (backward), on the CPU
    run: Callable[[str, torch.dtype], tuple[torch.Tensor, ...]]


def _inputs(shape, count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(count)]


def exchange_case(label, shape, direction, **options) -> Case:
    x_t, eps, ref_t, eps_ref, z, weight = _inputs(shape, 6, seed=sum(shape))
    eps, eps_ref = eps * 0.8, eps_ref * 0.8
    options = dict(step=step_coefficients(49, 39, eta=1.0), **options)

    def run(backend, dtype):
        leaves = [t.to(dtype).requires_grad_(direction == "backward") for t in (x_t, eps, ref_t, eps_ref, z)]
        out = ops.exchange_update(*leaves, backend=backend, **options)
        if direction == "forward":
            return (out.detach(),)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), leaves)

    return Case("exchange_update", direction, label, shape, run)


def mani_case(label, shape, direction, t=600) -> Case:
    x0, z, weight = _inputs(shape, 3, seed=sum(shape) + 1)
    x0 = x0.clamp(-1, 1)

    def run(backend, dtype):
        x, noise = (v.to(dtype).requires_grad_(direction == "backward") for v in (x0, z))
        out = ops.mani_noise(x, t, noise, backend=backend)
        if direction == "forward":
            return (out.detach(),)
        return torch.autograd.grad((out * weight.to(dtype)).sum(), (x, noise))

    return Case("mani_noise", direction, label, shape, run)


def cases(smoke: bool) -> list[Case]:
    cifar = (1, 2, 32, 32) if smoke else (4, 3, 32, 32)
    out = [
        exchange_case("cifar", cifar, "forward"),
        exchange_case("cifar-project-real", cifar, "forward", phase_mode="project", reconstruct="real"),
        exchange_case("cifar", (1, 3, 32, 32), "backward"),
        mani_case("cifar", cifar, "forward"),
        mani_case("cifar", (1, 3, 32, 32), "backward"),
        mani_case("64x64", (1, 1, 64, 64), "forward"),
    ]
    if not smoke:
        out += [
            mani_case("64x64", (1, 1, 64, 64), "backward"),
            exchange_case("imagenet-plane", (1, 1, 256, 256), "forward"),
        ]
    return out


def _error(fast, exact) -> float:
    return float((fast.double() - exact).abs().max())


def measure_case(case: Case, precisions=PRECISIONS) -> list[dict]:
    """One row per precision: the largest error against the fp64 reference (over the largest
    exact gradient, backward), beside the fp32 reference's own."""
    if case.op == "mani_noise":
        assert triton_mani.mani_path(*case.shape[-2:]) != "large", "the large path's dots are cuFFT's"
    exact = case.run("reference", torch.float64)
    eager = case.run("reference", torch.float32)
    scale = 1.0 if case.direction == "forward" else max(float(g.abs().max()) for g in exact)
    eager_error = max(_error(e, x) for e, x in zip(eager, exact)) / scale
    rows = []
    for precision in precisions:
        with dot_precision(precision):
            fast = case.run("triton", torch.float32)
        error = max(_error(f, x) for f, x in zip(fast, exact)) / scale
        rows.append(
            dict(
                op=case.op,
                direction=case.direction,
                label=case.label,
                shape=list(case.shape),
                precision=precision,
                error="max abs vs fp64 reference"
                + ("" if case.direction == "forward" else ", over max |grad|"),
                max_error=error,
                eager_fp32_max_error=eager_error,
            )
        )
        print(
            f"{case.op:16s} {case.direction:8s} {case.label:20s} {precision:7s} {error:.2e}"
            f"  (eager fp32 {eager_error:.2e})"
        )
    return rows


def fixture_rows(fixtures: Path, precisions=PRECISIONS) -> list[dict]:
    """T7 as stated: the golden purifications (SPEC §4, FreqPure: exchange kernels only) on the
    ``triton`` backend against the reference's recorded outputs."""
    path = fixtures / "reverse_step_parity.pt"
    if not path.is_file():
        print(f"{path} is absent: no end-to-end rows")
        return []
    from manipure_fast.compat import PurificationForward

    def eps_model(x, t):  # the fixtures' closed-form noise model (SPEC §4)
        return 0.1 * x + 0.001 * (t.view(-1, 1, 1, 1) / 1000.0)

    rows = []
    for case in torch.load(path, weights_only=True)["purification_cases"]:
        arguments = [case[k] for k in ("max_timestep", "attack_steps", "sampling_method", "is_imagenet")]
        options = {
            k: case[k] for k in ("amplitude_cut_range", "phase_cut_range", "delta", "forward_noise_steps")
        }
        for precision in precisions:
            # The reference's own constructor (the drop-in API), replaying its recorded noise.
            noise = RecordedNoise(case["noise"], case["noise_labels"])
            purifier = PurificationForward(
                torch.nn.Identity(), eps_model, *arguments, "cpu", **options, noise=noise
            )
            with ops.use_backend("triton"), dot_precision(precision):
                out = purifier.preprocess(case["x"])
            error = float((out - case["purified"]).abs().max())
            rows.append(
                dict(
                    op="purify",
                    direction="forward",
                    label=case["name"],
                    shape=list(case["x"].shape),
                    precision=precision,
                    error="max abs vs the reference purifier's recorded output",
                    max_error=error,
                    within_t7=error <= T7_ATOL,
                )
            )
            print(f"purify (fixture)  {case['name']:30s} {precision:7s} {error:.2e}")
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="small planes, no fixtures; writes nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("the emulation runs under the Triton interpreter: set TRITON_INTERPRET=1")
    meta = dict(provenance(torch.device("cpu")), method="Triton interpreter, tensor-core dots emulated")
    path = None if args.smoke else args.out / f"precision-emulation-{meta['date']}.json"
    rows = []
    for case in cases(args.smoke):
        rows += measure_case(case)
        if path is not None:
            write_rows(path, rows, meta)
    if not args.smoke:
        rows += fixture_rows(args.fixtures)
        write_rows(path, rows, meta)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
