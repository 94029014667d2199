"""Time the CUDA C++ kernels' compile-time choices on a GPU (docs/kernels.md, "Not measured yet"),
through the JIT loader. The shipped choices were made by counting; this measures them against
their neighbours.

    python bench/tune_cuda.py            # on a GPU with CuPy: bench/results/tune-cuda-<gpu>-<date>.json

Variants, each one define away from the shipped source (prepended to what the JIT compiles):

- ``MANIPURE_TENSOR_CORE_MAX_SIDE=0``: the FMA loops instead of the 3xTF32 tensor-core path, for
  both ops, forward and backward, at CIFAR B=512 (the path's planes);
- ``MANIPURE_INVERSE_ROWS_PER_THREAD`` 1, 2 and 8 against 4: the pixel rows a thread of the
  exchange's ``band_inverse_rows`` takes, in the FMA loops: forward and backward at ImageNet B=64;
- ``MANIPURE_SUM_EVERY_BAND_COLUMN=1``: the exchange's row transforms summing every band column,
  against the shipped half and their mirrors (the same bits), at ImageNet B=64;
- ``MANIPURE_UNPAIRED_FREQUENCIES=1``: the exchange's column, inverse column and inverse row
  transforms without pairing the frequencies theta and -theta, at ImageNet B=64;
- ``MANIPURE_ALWAYS_COMPLEX_Y=1``: the exchange taking y complex where Re y suffices and the
  shipped kernels take it alone (the forward's inverse rows summing Im y too; the backward's y
  rows likewise, and fft2_band(g_y) transforming g_y as two real images, not one), at CIFAR
  B=512 (the tensor cores) and ImageNet B=64;
- ``MANIPURE_WHOLE_W_BAND=1``: the exchange's tensor-core path holding the whole W band, not its
  non-negative half, at CIFAR B=512.

and two choices made in ``cuda_ops`` for 256x256 planes on thread-block clusters, at ImageNet
B=64: MANI in one launch (``mani_noise_cluster.cu``, and its backward) against the four launches
around cuFFT (eight for the backward; ``MANI_CLUSTER`` off), and the exchange on eight blocks per
plane (``exchange_update_cluster.cu`` and its backward) against one (``EXCHANGE_CLUSTER`` off).

Every variant's output is first compared with the shipped kernels' on the same inputs (a
difference over 1e-4 is a red gate, reported and not timed), then timed with
``triton.testing.do_bench`` (L2 flushed; median, p20, p80). A variant that does not compile or
launch is a row with its error. Rows carry the GPU, versions and commit, and are rewritten after
each group. ``main(["--smoke"])`` runs every variant once on small planes through whatever
``cuda_ops._launch`` is (tests/test_cuda_ops.py puts the CPU runtime there) and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ops import provenance, write_rows  # noqa: E402
from bench.variants import RED_GATE, Group, planes  # noqa: E402,F401 - RED_GATE: the tests' bound
from manipure_fast.ops import cuda_ops  # noqa: E402
from manipure_fast.ops.triton_exchange import ExchangeParams  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

SHAPES = {"cifar-B512": (512, 3, 32, 32), "imagenet-B64": (64, 3, 256, 256)}
SMOKE_SHAPES = {"cifar-B512": (1, 2, 20, 24), "imagenet-B64": (1, 1, 36, 40)}
FMA_LOOPS = ("FMA loops", {"MANIPURE_TENSOR_CORE_MAX_SIDE": 0})
INVERSE_ROWS = [(f"{n} inverse rows per thread", {"MANIPURE_INVERSE_ROWS_PER_THREAD": n}) for n in (1, 2, 8)]
EVERY_BAND_COLUMN = ("every band column summed", {"MANIPURE_SUM_EVERY_BAND_COLUMN": 1})
UNPAIRED_FREQUENCIES = ("unpaired frequencies", {"MANIPURE_UNPAIRED_FREQUENCIES": 1})
ALWAYS_COMPLEX_Y = ("complex y everywhere", {"MANIPURE_ALWAYS_COMPLEX_Y": 1})
WHOLE_W_BAND = ("whole W band", {"MANIPURE_WHOLE_W_BAND": 1})
FOUR_LAUNCHES = ("4 launches around cuFFT", {"MANI_CLUSTER": False})
EIGHT_LAUNCHES = ("8 launches around cuFFT", {"MANI_CLUSTER": False})
ONE_BLOCK_PER_PLANE = ("one block per plane", {"EXCHANGE_CLUSTER": False})
SMOKE_CLUSTER_SHAPE = (1, 1, 256, 256)  # the cluster kernel's plane, one of it


@contextlib.contextmanager
def compiled_with(defines: dict):
    """The JIT loader's kernels, compiled with ``defines`` prepended to their source. The
    tensor-core side is also the one ``cuda_ops`` sizes shared memory by, so it is set there too."""
    original_source, original_side = cuda_ops.kernel_source, cuda_ops.TENSOR_CORE_SIDE
    prefix = "".join(f"#define {name} {value}\n" for name, value in defines.items())
    saved_loader = os.environ.get("MANIPURE_CUDA_LOADER")
    cuda_ops.kernel_source = lambda file: prefix + original_source(file)
    cuda_ops.TENSOR_CORE_SIDE = defines.get("MANIPURE_TENSOR_CORE_MAX_SIDE", original_side)
    os.environ["MANIPURE_CUDA_LOADER"] = "jit"  # the library's choices are compiled in
    cuda_ops._kernel.cache_clear()
    try:
        yield
    finally:
        cuda_ops.kernel_source, cuda_ops.TENSOR_CORE_SIDE = original_source, original_side
        if saved_loader is None:
            os.environ.pop("MANIPURE_CUDA_LOADER", None)
        else:
            os.environ["MANIPURE_CUDA_LOADER"] = saved_loader
        cuda_ops._kernel.cache_clear()


CLUSTER_FLAGS = ("MANI_CLUSTER", "EXCHANGE_CLUSTER")


@contextlib.contextmanager
def cluster_paths(settings: dict):
    """``cuda_ops.MANI_CLUSTER`` and ``EXCHANGE_CLUSTER`` as ``settings`` give them, for the duration."""
    original = {name: getattr(cuda_ops, name) for name in CLUSTER_FLAGS}
    for name in CLUSTER_FLAGS:
        setattr(cuda_ops, name, settings.get(name, original[name]))
    try:
        yield
    finally:
        for name, value in original.items():
            setattr(cuda_ops, name, value)


def exchange_groups(label, shape, device) -> list[Group]:
    params = ExchangeParams.from_step(step_coefficients(49, 39, eta=1.0))
    coefficients = [float(getattr(params, name)) for name in cuda_ops.COEFFICIENTS]
    x_t, eps, ref_t, eps_ref, z, grad = planes(shape, device, 6, seed=0)
    cuts = (params.amplitude_cut_range, params.phase_cut_range, False, False)
    forward = lambda: cuda_ops.launch_exchange_update(x_t, eps, ref_t, eps_ref, z, None, coefficients, *cuts)  # noqa: E731
    backward = lambda: cuda_ops.launch_exchange_update_backward(
        grad, x_t, eps, ref_t, eps_ref, coefficients, *cuts
    )
    # Both directions take the tensor cores up to TENSOR_CORE_SIDE, and the FMA loops (whose inverse
    # rows per thread are a choice) above.
    variants = (
        [FMA_LOOPS, ALWAYS_COMPLEX_Y, WHOLE_W_BAND]
        if max(shape[-2:]) <= cuda_ops.TENSOR_CORE_SIDE
        else [*INVERSE_ROWS, EVERY_BAND_COLUMN, UNPAIRED_FREQUENCIES, ALWAYS_COMPLEX_Y]
    )
    op = "exchange_update"
    return [
        Group(op, "forward", label, shape, forward, compiled_with, variants),
        Group(op, "backward", label, shape, backward, compiled_with, variants),
    ]


def mani_groups(label, shape, device) -> list[Group]:
    if max(shape[-2:]) > cuda_ops.TENSOR_CORE_SIDE:
        return []  # nothing compile-time to vary above the tensor-core path's planes
    x, z, grad = planes(shape, device, 3, seed=1)
    options = (999, 8, 1.8, 1e-6, "width", "spectral", "rms")
    forward = lambda: cuda_ops.launch_mani_noise(x, z, None, *options)[0]  # noqa: E731
    backward = lambda: cuda_ops.launch_mani_noise_backward(grad, x, z, *options, False, True)  # noqa: E731
    return [
        Group("mani_noise", "forward", label, shape, forward, compiled_with, [FMA_LOOPS]),
        Group("mani_noise", "backward", label, shape, backward, compiled_with, [FMA_LOOPS]),
    ]


def cluster_groups(label, shape, device) -> list[Group]:
    """256x256 planes: the exchange on clusters against one block per plane, and MANI's cluster
    launches against the large-plane path, both directions."""
    params = ExchangeParams.from_step(step_coefficients(49, 39, eta=1.0))
    coefficients = [float(getattr(params, name)) for name in cuda_ops.COEFFICIENTS]
    x_t, eps, ref_t, eps_ref, noise, g_out = planes(shape, device, 6, seed=3)
    cuts = (params.amplitude_cut_range, params.phase_cut_range, False, False)

    def exchange():
        return cuda_ops.launch_exchange_update(x_t, eps, ref_t, eps_ref, noise, None, coefficients, *cuts)

    def exchange_backward():
        return cuda_ops.launch_exchange_update_backward(g_out, x_t, eps, ref_t, eps_ref, coefficients, *cuts)

    x, z, grad = planes(shape, device, 3, seed=2)
    x = x.clamp(-1, 1)
    options = (999, 8, 1.8, 1e-6, "width", "spectral", "rms")
    forward = lambda: cuda_ops.launch_mani_noise(x, z, None, *options)[0]  # noqa: E731
    backward = lambda: cuda_ops.launch_mani_noise_backward(grad, x, z, *options, False, True)  # noqa: E731
    return [
        Group("exchange_update", "forward", label, shape, exchange, cluster_paths, [ONE_BLOCK_PER_PLANE]),
        Group(
            "exchange_update",
            "backward",
            label,
            shape,
            exchange_backward,
            cluster_paths,
            [ONE_BLOCK_PER_PLANE],
        ),
        Group("mani_noise", "forward", label, shape, forward, cluster_paths, [FOUR_LAUNCHES]),
        Group("mani_noise", "backward", label, shape, backward, cluster_paths, [EIGHT_LAUNCHES]),
    ]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="small planes through cuda_ops._launch; writes nothing"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if not args.smoke:
        if device.type != "cuda":
            parser.error("timings need a CUDA device; --smoke checks the variants through cuda_ops._launch")
        reason = cuda_ops.loader_unavailable_reason("jit")
        if reason is not None:
            parser.error(f"the variants compile through the JIT loader: {reason}")
    path, meta = None, provenance(device)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"tune-cuda-{meta['gpu'].replace(' ', '_')}-{meta['date']}.json"
    rows = []
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    cluster_shape = SMOKE_CLUSTER_SHAPE if args.smoke else SHAPES["imagenet-B64"]
    for label, shape in shapes.items():
        groups = exchange_groups(label, shape, device) + mani_groups(label, shape, device)
        if label == "imagenet-B64":
            groups += cluster_groups(label, cluster_shape, device)
        for group in groups:
            rows += group.time(device, args.smoke)
            if path is not None:
                write_rows(path, rows, meta)
    print(f"smoke run: {len(rows)} rows, nothing written" if args.smoke else f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
