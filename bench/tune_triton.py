"""Time the Triton kernels' tile, warp and stage choices on a GPU (docs/kernels.md, "Not
measured yet"). The shipped choices were made from sm_90 compile counts (registers and spills);
this measures them against their neighbours.

    python bench/tune_triton.py            # on a GPU: bench/results/tune-<gpu>-<date>.json
    python bench/tune_triton.py --smoke    # anywhere: tiny planes, every variant runs, writes nothing

Each variant changes one choice and keeps the launcher's others. It wraps the kernel object in
its kernel module (the launchers import it from there at each call), so the launch's own
arguments pass through and only the named constexprs and launch options are replaced:

- exchange_update, forward and backward, at CIFAR B=512 and ImageNet B=64: ``BLOCK_M`` (32 where
  the plane's height is a multiple), ``BLOCK_K`` (16, 32, 64, at most the padded width),
  ``num_stages`` (1, 2, 3), ``num_warps`` (4, 8, 16), ``PRECISION="tf32x3"`` (the dots on
  tensor cores in three TF32 passes), and the whole W band in place of its non-negative half
  (``triton_exchange.HALF_BAND_W``);
- mani_noise at CIFAR B=512, forward and backward: the whole-tile kernel's warps, the streamed
  kernel (``mani_noise_rows``) in its place, ``tf32x3``, and the whole W spectrum in place of its
  half (``triton_mani.HALF_SPECTRUM_W``); at 64x64 B=256, the streamed kernels' warps and
  ``tf32x3``;
- mani_noise at ImageNet B=64: the large-plane kernels' ``BLOCK`` (1024-8192) and warps (its
  cuFFT transforms are the same in every variant).

Every variant's output is first compared with the shipped choice's on the same inputs (a
variant that differs by more than 1e-4 is a red gate, reported and not timed), then timed with
``triton.testing.do_bench`` (L2 flushed; median, p20, p80). A variant that does not compile or
launch (too much shared memory, say) is a row with its error. Rows carry the GPU, versions and
commit, and are rewritten after each group, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ops import provenance, write_rows  # noqa: E402
from bench.variants import RED_GATE, Group, planes  # noqa: E402,F401 - RED_GATE: the tests' bound
from manipure_fast.ops import triton_exchange, triton_mani  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

# The dots on the tensor cores: three TF32 products per product, about fp32's accuracy
# (docs/kernels.md, "Precision": the ieee kernels' FMA work bounds T1 and T3 at CIFAR).
TF32X3 = ("PRECISION=tf32x3", dict(PRECISION="tf32x3"))
SHAPES = {"cifar-B512": (512, 3, 32, 32), "imagenet-B64": (64, 3, 256, 256), "64x64-B256": (256, 3, 64, 64)}
SMOKE_SHAPES = {"cifar-B512": (2, 3, 32, 32), "imagenet-B64": (1, 1, 72, 72), "64x64-B256": (1, 1, 48, 48)}


class _Override:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` launches the real kernel with
    ``overrides`` replacing those keyword arguments."""

    def __init__(self, kernel, overrides: dict):
        self.kernel, self.overrides = kernel, overrides

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel[grid](*args, **(kwargs | self.overrides))


@contextlib.contextmanager
def overriding(module: str, kernels: tuple[str, ...], overrides: dict):
    """Launch ``kernels`` of ``manipure_fast.kernels.triton.<module>`` with ``overrides``."""
    found = importlib.import_module(f"manipure_fast.kernels.triton.{module}")
    saved = {name: getattr(found, name) for name in kernels}
    try:
        for name, kernel in saved.items():
            setattr(found, name, _Override(kernel, overrides))
        yield
    finally:
        for name, kernel in saved.items():
            setattr(found, name, kernel)


@contextlib.contextmanager
def launcher(path: str, forward, backward):
    """Send the MANI ``path`` ("tile", "rows", "large") to other launchers."""
    saved = triton_mani.FORWARD_LAUNCHERS[path], triton_mani.BACKWARD_LAUNCHERS[path]
    triton_mani.FORWARD_LAUNCHERS[path], triton_mani.BACKWARD_LAUNCHERS[path] = forward, backward
    try:
        yield
    finally:
        triton_mani.FORWARD_LAUNCHERS[path], triton_mani.BACKWARD_LAUNCHERS[path] = saved


@contextlib.contextmanager
def switched_off(module, flag: str):
    """``module.<flag>`` False for the duration: the exchange kernels on every W band frequency
    (``triton_exchange.HALF_BAND_W``), or the MANI whole-tile kernels on the whole W spectrum
    (``triton_mani.HALF_SPECTRUM_W``), not its non-negative half."""
    saved = getattr(module, flag)
    setattr(module, flag, False)
    try:
        yield
    finally:
        setattr(module, flag, saved)


def _exchange_variants(shape) -> list[tuple[str, dict]]:
    """One choice changed at a time around the shipped tiling."""
    h, w = shape[-2:]
    params = _exchange_params()
    tiling, _ = triton_exchange._tiling_and_tables(h, w, params, torch.device("cpu"))
    variants = [(f"BLOCK_M={m}", dict(BLOCK_M=m)) for m in (16, 32) if m != tiling.block_m and h % m == 0]
    variants += [
        (f"BLOCK_K={k}", dict(BLOCK_K=k)) for k in (16, 32, 64) if k != tiling.block_k and k <= tiling.block_w
    ]
    variants += [(f"num_stages={s}", dict(num_stages=s)) for s in (1, 2, 3) if s != tiling.num_stages]
    variants += [(f"num_warps={n}", dict(num_warps=n)) for n in (4, 8, 16) if n != tiling.num_warps]
    if tiling.half_band_w:
        variants.append(("whole W band", dict(whole_w_band=True)))
    return variants + [TF32X3]


def _exchange_params():
    return triton_exchange.ExchangeParams.from_step(step_coefficients(49, 39, eta=1.0))


def exchange_groups(label, shape, device):
    """The forward's and the backward's groups."""
    params = _exchange_params()
    x_t, eps, ref_t, eps_ref, z, grad = planes(shape, device, 6, seed=0)
    forward = lambda: triton_exchange.launch_exchange_update(x_t, eps, ref_t, eps_ref, z, None, params)[0]  # noqa: E731
    backward = lambda: triton_exchange.launch_exchange_update_backward(grad, x_t, eps, ref_t, eps_ref, params)  # noqa: E731
    variants = _exchange_variants(shape)
    return _forward_and_backward(
        "exchange_update", label, shape, forward, backward, "exchange_update", variants
    )


def mani_groups(label, shape, device):
    params = triton_mani.ManiParams(999)
    x, z, grad = planes(shape, device, 3, seed=1)
    path = triton_mani.mani_path(*shape[-2:])
    forward = lambda: triton_mani.FORWARD_LAUNCHERS[path](x, z, None, params)[0]  # noqa: E731
    backward = lambda: triton_mani.BACKWARD_LAUNCHERS[path](grad, x, z, params, noise_grad=True)  # noqa: E731
    warps = [(f"num_warps={n}", dict(num_warps=n)) for n in (4, 8, 16)]
    op = "mani_noise"
    if path == "large":
        kernels = ("mani_band_weights_kernel", "mani_inject_kernel")
        variants = [
            (f"BLOCK={b},num_warps={n}", dict(BLOCK=b, num_warps=n))
            for b in (1024, 2048, 4096, 8192)
            for n in (4, 8, 16)
            if (b, n) != (triton_mani.LARGE_BLOCK, 4)
        ]
        return [Group(op, "forward", label, shape, forward, _context(f"{op}_large", *kernels), variants)]
    if path == "rows":
        others = [v for v in warps if v[1]["num_warps"] != 8] + [TF32X3]
        return _forward_and_backward(op, label, shape, forward, backward, f"{op}_rows", others)
    streamed = ("streamed kernel", dict(path="rows"))
    whole = ("whole W spectrum", dict(whole_w_spectrum=True))
    tile_forward = [v for v in warps if v[1]["num_warps"] != 8] + [
        streamed,
        whole,
        TF32X3,
    ]  # it ships 8 warps
    tile_backward = [v for v in warps if v[1]["num_warps"] != 8] + [streamed, whole, TF32X3]  # it ships 8
    return _forward_and_backward(op, label, shape, forward, backward, op, tile_forward, tile_backward)


def _forward_and_backward(op, label, shape, forward, backward, module, variants, backward_variants=None):
    """The groups of kernel module ``module``'s kernel and of its backward module's
    (``<module>_backward``), named as the kernel modules name them."""
    backward_module = f"{module}_backward"
    return [
        Group(op, "forward", label, shape, forward, _context(module, f"{module}_kernel"), variants),
        Group(
            op,
            "backward",
            label,
            shape,
            backward,
            _context(backward_module, f"{backward_module}_kernel"),
            variants if backward_variants is None else backward_variants,
        ),
    ]


def _context(module: str, *kernels: str):
    """The variant context of ``kernels`` in kernel module ``module``: their overrides, the
    streamed MANI kernels in place of the whole tile (``path="rows"``), the exchange on the
    whole W band (``whole_w_band``), or the MANI whole tile on the whole W spectrum
    (``whole_w_spectrum``)."""

    def context(overrides: dict):
        if overrides.get("whole_w_band"):
            return switched_off(triton_exchange, "HALF_BAND_W")
        if overrides.get("whole_w_spectrum"):
            return switched_off(triton_mani, "HALF_SPECTRUM_W")
        if overrides.get("path") == "rows":  # the whole-tile path's planes through the streamed kernels
            return launcher(
                "tile", triton_mani.launch_mani_noise_rows, triton_mani.launch_mani_noise_rows_backward
            )
        return overriding(module, kernels, overrides)

    return context


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny planes on any device; writes nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("timings need a CUDA device; use --smoke to check the code path on a CPU")
    path, meta = None, provenance(device)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"tune-{meta['gpu'].replace(' ', '_')}-{meta['date']}.json"
    rows = []
    for label, shape in (SMOKE_SHAPES if args.smoke else SHAPES).items():
        groups = mani_groups(label, shape, device)
        if label != "64x64-B256":
            groups = exchange_groups(label, shape, device) + groups
        for group in groups:
            rows += group.time(device, args.smoke)
            if path is not None:
                write_rows(path, rows, meta)
    if args.smoke:
        print(f"smoke run: {len(rows)} rows, nothing written")
    else:
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
