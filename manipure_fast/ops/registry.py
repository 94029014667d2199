"""The backend registry: which implementation runs an op.

Backends: ``triton`` (fused Triton kernels), ``cuda`` (the CUDA C++ kernels, from the
ahead-of-time library or CuPy's NVRTC JIT, see ``cuda_ops``), ``reference`` (plain PyTorch, runs
everywhere). Each states what it supports (device, dtype, plane size) per op.

Selection, highest priority first: the ``backend=`` argument, the ``use_backend(...)`` context
manager, the ``MANIPURE_BACKEND`` environment variable, else ``"auto"``. ``"auto"`` takes the first
capable backend of the measured order for the op and shape (``dispatch``: the committed table that
the GPU benchmarks produce), then of ``AUTO_ORDER`` (triton, then the reference), and falls back
quietly. The cuda backend joins ``"auto"`` only where the table measured it fastest. An explicit
request that cannot be met raises ``ValueError`` saying why.

Example::

    with use_backend("reference"):
        purifier.purify(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import torch

from .dispatch import measured_order

BACKENDS = ("triton", "cuda", "reference")
AUTO_ORDER = ("triton", "reference")
_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("manipure_backend", default=None)

# Largest plane side each triton op handles (ops/triton_exchange.py). mani_noise has no limit: one
# launch up to 64x64, cuFFT and two fused kernels above (ops/triton_mani.py).
TRITON_MAX_SIDE = {"exchange_update": 256}
# The cuda kernels: the exchange's band DFT in one block per plane (its shared memory also depends
# on the cut radius, checked at launch). mani_noise has no limit: one block per plane up to 64x64,
# cuFFT and two kernels above (ops/cuda_ops.py).
CUDA_MAX_SIDE = {"exchange_update": 256}


@contextlib.contextmanager
def use_backend(name: str):
    _check_name(name)
    token = _requested.set(name)
    try:
        yield
    finally:
        _requested.reset(token)


def _check_name(name: str) -> None:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=16)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def unsupported_reason(backend: str, op: str, x: torch.Tensor, n_bands: int | None = None) -> str | None:
    """None if ``backend`` runs ``op`` on tensors like ``x`` (with ``n_bands`` MANI bands, where
    given), else why not."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed"
        if x.device.type == "cuda":
            pass
        elif x.device.type == "cpu" and _interpreting():
            pass
        else:
            return f"triton runs on CUDA devices (or on the CPU with TRITON_INTERPRET=1), not {x.device}"
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"triton computes in fp32 from fp32/fp16/bf16 inputs, not {x.dtype}"
        side = TRITON_MAX_SIDE.get(op)
        if side is not None and (x.shape[-1] > side or x.shape[-2] > side):
            return f"triton {op} handles planes up to {side}x{side}, not {x.shape[-2]}x{x.shape[-1]}"
        return None
    if backend == "cuda":
        if x.device.type != "cuda":
            return f"the cuda kernels run on CUDA devices, not {x.device}"
        from .cuda_ops import capability_unsupported_reason, cuda_unavailable_reason

        reason = cuda_unavailable_reason() or capability_unsupported_reason(_capability(x.device))
        if reason is not None:
            return reason
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"cuda computes in fp32 from fp32/fp16/bf16 inputs, not {x.dtype}"
        side = CUDA_MAX_SIDE.get(op)
        if side is not None and (x.shape[-1] > side or x.shape[-2] > side):
            return f"cuda {op} handles planes up to {side}x{side}, not {x.shape[-2]}x{x.shape[-1]}"
        return options_unsupported_reason(backend, op, n_bands)
    raise ValueError(f"unknown backend {backend!r}")


def options_unsupported_reason(backend: str, op: str, n_bands: int | None = None) -> str | None:
    """The part of ``unsupported_reason`` that holds on any device: None if ``backend`` takes
    ``op``'s options (so far, the cuda kernels' MANI band limit), else why not."""
    if backend == "cuda" and op == "mani_noise" and n_bands is not None:
        from .cuda_ops import mani_unsupported_reason

        return mani_unsupported_reason(n_bands)
    return None


def select_backend(op: str, x: torch.Tensor, requested: str | None = None, n_bands: int | None = None) -> str:
    name = requested or _requested.get() or os.environ.get("MANIPURE_BACKEND") or "auto"
    _check_name(name)
    if name != "auto":
        reason = unsupported_reason(name, op, x, n_bands)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run {op}: {reason}")
        return name
    for candidate in auto_order(op, tuple(x.shape), on_gpu=x.device.type == "cuda"):
        if unsupported_reason(candidate, op, x, n_bands) is None:
            return candidate
    return "reference"


def auto_order(op: str, shape: tuple[int, ...], on_gpu: bool) -> tuple[str, ...]:
    """The order ``"auto"`` tries: the measured one for a GPU tensor of this shape, then AUTO_ORDER."""
    measured = measured_order(op, shape) if on_gpu and len(shape) == 4 else None
    return tuple(dict.fromkeys((*(measured or ()), *AUTO_ORDER)))
