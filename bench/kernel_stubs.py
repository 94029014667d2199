"""Every Triton kernel of the package, replaced for the length of a block: the ops' real launchers
then run with their real arguments, and whatever stands in sees (or ignores) each launch.
bench/compile_sm90.py records the launches; bench/bench_host_overhead.py drops them."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable

# The kernel modules under manipure_fast.kernels.triton (the launchers import their kernels from
# these at each call, so replacing the module attribute reaches them).
KERNEL_MODULES = (
    "exchange_update",
    "exchange_update_backward",
    "mani_noise",
    "mani_noise_backward",
    "mani_noise_large",
    "mani_noise_large_backward",
    "mani_noise_rows",
    "mani_noise_rows_backward",
)


@contextlib.contextmanager
def kernels_replaced(stand_in: Callable):
    """Within the block, each kernel ``k`` of the modules above is ``stand_in(k)``; restored after."""
    patched = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"manipure_fast.kernels.triton.{name}")
        for attr, value in vars(module).items():
            if attr.endswith("_kernel") and hasattr(value, "arg_names"):  # jitted, or interpreted
                patched.append((module, attr, value))
    try:
        for module, attr, value in patched:
            setattr(module, attr, stand_in(value))
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
