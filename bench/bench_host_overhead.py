"""Host time of one fused-op call on the triton backend, with its kernel launches replaced by
no-ops: the Python around the kernels (argument checks, backend selection, the cached band tables
and tiling, output allocation, the autograd Function). Eager callers, such as attacks or
purification without GraphedPurifier, pay it on every reverse step on top of the GPU time. A
captured graph does not.

    python bench/bench_host_overhead.py            # bench/results/host-overhead-<cpu or gpu>-<date>.json
    python bench/bench_host_overhead.py --smoke    # a few calls; checks the path, writes nothing

It runs on any machine, because the kernels never run. Without a GPU the tensors live on the CPU,
and backend selection takes the interpreter's route (``TRITON_INTERPRET=1``, set here). This
times the host code, not a launch: Triton's own launch cost (its argument binding and the driver
call) comes on top, on a GPU. Each row is the median of 7 repeats of ``--calls`` calls, in
microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the CPU route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ops import provenance, write_rows  # noqa: E402
from bench.kernel_stubs import kernels_replaced  # noqa: E402
from manipure_fast import ops  # noqa: E402
from manipure_fast.ops import triton_exchange  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

SHAPES = {"cifar-B64": (64, 3, 32, 32), "64x64-B8": (8, 3, 64, 64), "imagenet-B8": (8, 3, 256, 256)}
REPEATS = 7


class _NoLaunch:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def calls(shape, device) -> dict:
    """The timed calls at ``shape``: name -> a function of no arguments."""
    gen = torch.Generator(device=device).manual_seed(0)
    x_t, eps, ref_t, eps_ref, z, grad = (torch.randn(shape, device=device, generator=gen) for _ in range(6))
    step = step_coefficients(49, 39, eta=1.0)
    params = triton_exchange.ExchangeParams.from_step(step)
    planes = (x_t, eps, ref_t, eps_ref)
    tracked = x_t.clone().requires_grad_()  # as an attack's input: the autograd Function's path
    found = {
        "exchange_update forward": lambda: ops.exchange_update(*planes, z, step=step, backend="triton"),
        "exchange_update forward, tracked": lambda: ops.exchange_update(
            tracked, *planes[1:], z, step=step, backend="triton"
        ),
        "exchange_update backward launcher": lambda: triton_exchange.launch_exchange_update_backward(
            grad, *planes, params
        ),
    }
    if max(shape[-2:]) <= 64:  # above, mani_noise runs cuFFT, which would run here for real
        x = x_t.clamp(-1, 1)
        x_tracked = x.clone().requires_grad_()
        found["mani_noise forward"] = lambda: ops.mani_noise(x, 300, z, backend="triton")
        found["mani_noise forward, tracked"] = lambda: ops.mani_noise(x_tracked, 300, z, backend="triton")
    return found


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few calls; writes nothing")
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat (default 2000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    number = 5 if args.smoke else args.calls
    meta = provenance(device)
    rows = []
    with kernels_replaced(lambda kernel: _NoLaunch()):
        # A first pass over every call builds the cached tables and warms the allocator: on the CPU,
        # the first large allocations of a process come from mmap, and the first call timed was
        # several times slower than the same call timed later.
        for shape in SHAPES.values():
            for call in calls(shape, device).values():
                timeit.repeat(call, number=number, repeat=1)
        for label, shape in SHAPES.items():
            for name, call in calls(shape, device).items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times = timeit.repeat(call, number=number, repeat=REPEATS)
                us = statistics.median(times) / number * 1e6
                rows.append(
                    dict(call=name, label=label, shape=list(shape), host_us_per_call=us, calls=number)
                )
                print(f"{label:12s} {name:36s} {us:8.1f} us")
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        where = (meta["gpu"] or "cpu").replace(" ", "_")
        path = args.out / f"host-overhead-{where}-{meta['date']}.json"
        write_rows(path, rows, meta)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
