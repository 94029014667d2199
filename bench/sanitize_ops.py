"""A short workload for compute-sanitizer: every fused op on every GPU backend, forward (with given
and in-kernel noise) and backward, on awkward small shapes, every MANI path and one ImageNet plane.

    compute-sanitizer --tool memcheck python bench/sanitize_ops.py
    compute-sanitizer --tool racecheck python bench/sanitize_ops.py --backends cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manipure_fast import ops  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

# Awkward small planes, the triton MANI kernels' three paths (whole tile, streamed rows, cuFFT) and
# the cuda ones' two (one block, cuFFT), and one ImageNet plane (the cuda backend's thread-block
# cluster kernels on sm_90 and later: both ops, forward and backward).
SHAPES = [(1, 1, 31, 33), (7, 3, 28, 28), (2, 3, 32, 32), (1, 2, 48, 40), (1, 3, 64, 64), (1, 3, 256, 256)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="triton,cuda")
    parser.add_argument("--device", default="cuda", help="cpu checks the script under TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    step = step_coefficients(99, 89, eta=1.0)
    for backend in args.backends.split(","):
        rng = torch.tensor([3, 0], dtype=torch.int64, device=device)
        for shape in SHAPES:
            x, eps, ref_t, eps_ref, z = (torch.randn(shape, device=device) for _ in range(5))
            # forward, with given noise and with in-kernel Philox noise
            ops.exchange_update(x, eps, ref_t, eps_ref, z, step=step, backend=backend)
            ops.exchange_update(
                x, eps, ref_t, None, step=step, rng_state=rng, backend=backend, phase_mode="project"
            )
            pixels = x.clamp(-1, 1)
            ops.mani_noise(pixels, 300, rng_state=rng, backend=backend, band_mode="count")
            # backward: the fused backward kernels (for the 256x256 MANI plane, the triton backend's
            # around cuFFT)
            leaves = [t.clone().requires_grad_() for t in (x, eps, ref_t, eps_ref, pixels)]
            out = ops.exchange_update(*leaves[:4], z, step=step, backend=backend)
            out = out + ops.mani_noise(leaves[4], 300, z, backend=backend)
            out.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"{backend}: ran {len(SHAPES)} shapes, forward and backward")


if __name__ == "__main__":
    main()
