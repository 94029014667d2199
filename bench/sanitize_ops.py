"""A short workload for compute-sanitizer: every fused op on every GPU backend, with given and
in-kernel noise, on awkward small shapes and one ImageNet plane.

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

SHAPES = [(1, 1, 31, 33), (7, 3, 28, 28), (2, 3, 32, 32), (1, 3, 64, 64)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="triton,cuda")
    args = parser.parse_args(argv)
    step = step_coefficients(99, 89, eta=1.0)
    for backend in args.backends.split(","):
        rng = torch.tensor([3, 0], dtype=torch.int64, device="cuda")
        for shape in SHAPES + [(1, 3, 256, 256)]:
            x, eps, ref_t, eps_ref, z = (torch.randn(shape, device="cuda") for _ in range(5))
            ops.exchange_update(x, eps, ref_t, eps_ref, z, step=step, backend=backend)
            ops.exchange_update(
                x, eps, ref_t, None, step=step, rng_state=rng, backend=backend, phase_mode="project"
            )
            if shape[-1] <= 64:
                ops.mani_noise(x.clamp(-1, 1), 300, z, backend=backend)
                ops.mani_noise(x.clamp(-1, 1), 300, rng_state=rng, backend=backend, band_mode="count")
        torch.cuda.synchronize()
        print(f"{backend}: ran {len(SHAPES) + 1} shapes")


if __name__ == "__main__":
    main()
