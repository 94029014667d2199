"""The CUDA C++ kernels of ``kernels/cuda``, compiled with g++ against ``runtime.h`` and run on the
CPU: CI has no GPU, and this executes the kernels' real source, launched by the real launch code of
``manipure_fast.ops.cuda_ops`` (``launch`` has the signature of its ``_launch``).

Each launch checks what compute-sanitizer would catch on the device, as far as a CPU can:
- every argument against the kernel's parameter list: count, pointer or scalar, element type,
  contiguity (cudaLaunchKernel checks none of this);
- global memory outside a tensor: each tensor is copied into a buffer with poisoned margins (NaN
  for floats, so a read beyond the end poisons the result; intact margins afterwards, or a write
  beyond the end is reported);
- outputs (tensors passed only as non-const pointers) start as poison, and every element must be
  written;
- shared memory: NaN until written, and a guard past the launch's bytes (``runtime.h``);
- barriers every thread must reach, and races: ``schedule("reverse")`` runs the warps and lanes of
  each block, and the blocks of the launch, in the opposite order; a result that changes with it
  has a race (between barriers, or between blocks writing the same memory).

The blocks of a thread-block cluster run together, each with its own shared memory, which the
others reach through ``cluster_shared`` (``runtime.h``). Not modelled: other concurrent blocks
(they run one after another), warp-synchronous code without
shuffles, and the device's math functions, which differ from the host's by a few ulp.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy
import torch

RUNTIME = Path(__file__).resolve().parent / "runtime.h"
MARGIN = 64  # poisoned elements either side of every tensor
# A kernel, with its cluster's block count where it declares one (manipure_common.cuh's macro).
_KERNEL = re.compile(r'extern "C" __global__ void (?:MANIPURE_CLUSTER_DIMS\((\d+)\) )?(\w+)\(')
_DYNAMIC_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")
_POINTER_DTYPES = {
    "float*": torch.float32,
    "float2*": torch.float32,
    "int*": torch.int32,
    "int64*": torch.int64,
}
_SCALAR_TYPES = {"float": (numpy.float32, ctypes.c_float), "int": (numpy.int32, ctypes.c_int32)}
# Poison, by bit pattern. For floats, NaNs with payloads arithmetic does not produce (it yields the
# default NaN, or the operand's quietened), so "never written" differs from "wrote a NaN", and a
# margin's value copied into an output differs from an output element left unwritten.
_MARGIN_BITS = {torch.float32: 0x7FA5A5A5, torch.int32: -(2**31), torch.int64: -(2**63)}
_UNWRITTEN_BITS = {torch.float32: 0x7FB4B4B4, torch.int32: -(2**31) + 1, torch.int64: -(2**63) + 1}
_order = "forward"
# The kernels compile warning-free for the CPU, as they do under nvcc.
COMPILE_FLAGS = ("-std=c++17", "-O1", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas")


def cluster_blocks(source: str) -> dict[str, int]:
    """Each kernel of ``source`` with the block count of its thread-block cluster (1 without one)."""
    return {name: int(blocks or 1) for blocks, name in _KERNEL.findall(source)}


def compiler_unavailable_reason() -> str | None:
    return None if shutil.which("g++") else "g++ is not installed"


@contextlib.contextmanager
def schedule(order: str):
    """Runs the launches inside with warps, lanes and blocks in ``order`` ("forward" or "reverse")."""
    global _order
    if order not in ("forward", "reverse"):
        raise ValueError(f"order must be 'forward' or 'reverse', got {order!r}")
    previous, _order = _order, order
    try:
        yield
    finally:
        _order = previous


class Module:
    """One ``.cu`` source compiled for the CPU; ``kernel(name)`` gives a ``Kernel``."""

    def __init__(self, source: str, build_dir: Path):
        source = _DYNAMIC_SHARED.sub(r"\1* \2 = static_cast<\1*>(cuda_on_cpu::dynamic_shared());", source)
        if "__shared__" in source:
            raise NotImplementedError("static __shared__ arrays are not emulated; use dynamic shared memory")
        self.clusters = cluster_blocks(source)
        self.names = list(self.clusters)
        wrappers = "".join(
            f'extern "C" const char* cuda_on_cpu_launch_{n}(void** a, unsigned g, unsigned t, '
            f"unsigned long s, int r) {{ static std::string e; "
            f"e = cuda_on_cpu::launch({n}, a, g, t, s, r != 0, {blocks}); return e.c_str(); }}\n"
            f'extern "C" const char* cuda_on_cpu_signature_{n}() {{ static std::string s = '
            f"cuda_on_cpu::signature({n}); return s.c_str(); }}\n"
            for n, blocks in self.clusters.items()
        )
        text = source + "\n" + wrappers
        digest = hashlib.sha256((RUNTIME.read_text() + text).encode()).hexdigest()[:16]
        library = build_dir / f"kernels-{digest}.so"
        if not library.exists():
            # Written under a name of this process's own, then renamed: another test process
            # compiling the same source never loads a half-written library.
            cpp = build_dir / f"kernels-{digest}-{os.getpid()}.cpp"
            cpp.write_text(text)
            partial = cpp.with_suffix(".so")
            command = [
                "g++",
                *COMPILE_FLAGS,
                "-shared",
                "-include",
                str(RUNTIME),
                str(cpp),
                "-o",
                str(partial),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                # The head: the first error is the cause, and templates repeat it per instantiation.
                raise RuntimeError(f"g++ failed on the kernel source:\n{result.stderr[:4000]}")
            os.replace(partial, library)
            cpp.unlink()
        self._library = ctypes.CDLL(str(library))

    def kernel(self, name: str) -> Kernel:
        if name not in self.names:
            raise KeyError(f"no kernel {name!r} in the source; it has {self.names}")
        return Kernel(self._library, name)


class Kernel:
    def __init__(self, library: ctypes.CDLL, name: str):
        self.name = name
        self._launch = getattr(library, f"cuda_on_cpu_launch_{name}")
        self._launch.restype = ctypes.c_char_p
        self._launch.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
        signature = getattr(library, f"cuda_on_cpu_signature_{name}")
        signature.restype = ctypes.c_char_p
        self.parameters = signature().decode().split(",")

    def __call__(self, grid: int, threads: int, args: tuple, shared_bytes: int) -> None:
        """Launches with ``args`` (torch tensors on the CPU, numpy int32/float32 scalars), writing
        the tensors' new contents back; raises on a bad argument, an error inside the launch, a
        write outside a tensor, or an output (a tensor passed only as non-const pointers) not
        wholly written."""
        if len(args) != len(self.parameters):
            raise TypeError(f"{self.name} takes {len(self.parameters)} arguments, got {len(args)}")
        storage, buffers = [], {}  # one padded copy per distinct tensor: arguments may alias
        for index, (parameter, value) in enumerate(zip(self.parameters, args)):
            kind = parameter.removeprefix("const ")
            if kind in _POINTER_DTYPES:
                _check_tensor(self.name, index, kind, value)
                key = (value.data_ptr(), value.numel(), value.dtype)
                if key not in buffers:
                    padded = torch.empty(value.numel() + 2 * MARGIN, dtype=value.dtype)
                    _bits(padded).fill_(_MARGIN_BITS[value.dtype])
                    padded[MARGIN : MARGIN + value.numel()] = value.reshape(-1)
                    buffers[key] = _Buffer(value, padded, index)
                if parameter.startswith("const "):
                    buffers[key].read = True
                else:
                    buffers[key].written = True
                padded = buffers[key].padded
                storage.append(ctypes.c_void_p(padded.data_ptr() + MARGIN * padded.element_size()))
            elif kind in _SCALAR_TYPES:
                numpy_type, c_type = _SCALAR_TYPES[kind]
                if type(value) is not numpy_type:
                    raise TypeError(
                        f"{self.name} argument {index} is a {kind}; pass {numpy_type.__name__}, "
                        f"not {type(value).__name__}"
                    )
                storage.append(c_type(value.item()))
            else:
                raise TypeError(f"{self.name} parameter {index} has a type the harness does not map")
        for buffer in buffers.values():
            if not buffer.read:  # an output: what the kernel does not write stays poison
                _bits(buffer.padded[MARGIN:-MARGIN]).fill_(_UNWRITTEN_BITS[buffer.tensor.dtype])
        pointers = (ctypes.c_void_p * len(storage))(*(ctypes.addressof(s) for s in storage))
        error = self._launch(pointers, grid, threads, shared_bytes, int(_order == "reverse")).decode()
        if error:
            raise RuntimeError(f"{self.name}: {error}")
        for buffer in buffers.values():
            tensor, padded = buffer.tensor, buffer.padded
            described = f"a {tuple(tensor.shape)} {tensor.dtype} tensor"
            for side, margin in (("before", padded[:MARGIN]), ("after", padded[MARGIN + tensor.numel() :])):
                if not (_bits(margin) == _MARGIN_BITS[tensor.dtype]).all():
                    raise RuntimeError(f"{self.name} wrote {side} {described}")
            inside = padded[MARGIN : MARGIN + tensor.numel()]
            unwritten = 0 if buffer.read else int((_bits(inside) == _UNWRITTEN_BITS[tensor.dtype]).sum())
            if unwritten:
                raise RuntimeError(
                    f"{self.name} left {unwritten} of {tensor.numel()} elements of its output "
                    f"(argument {buffer.index}, {described}) unwritten"
                )
            if buffer.written:  # an input stays untouched, its autograd version too
                tensor.view(-1).copy_(inside)


class _Buffer:
    """A tensor argument's padded copy; ``read`` once it is passed as a const pointer, ``written``
    once as a non-const one."""

    def __init__(self, tensor: torch.Tensor, padded: torch.Tensor, index: int):
        self.tensor, self.padded, self.index = tensor, padded, index
        self.read = self.written = False


def _bits(values: torch.Tensor) -> torch.Tensor:
    return values.view(torch.int32) if values.dtype == torch.float32 else values


def _check_tensor(kernel: str, index: int, parameter: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{kernel} argument {index} is a {parameter}; pass a tensor, not {type(value).__name__}"
        )
    if value.dtype != _POINTER_DTYPES[parameter]:
        raise TypeError(f"{kernel} argument {index} is a {parameter}; got a {value.dtype} tensor")
    if value.device.type != "cpu":
        raise TypeError(f"{kernel} argument {index} is on {value.device}; the emulation runs on the CPU")
    if parameter == "float2*" and value.shape[-1:] != (2,):
        raise TypeError(f"{kernel} argument {index} is a float2*; pass a [..., 2] float32 tensor")
    if not value.is_contiguous():
        raise TypeError(
            f"{kernel} argument {index} is not contiguous; the kernel would read it as if it were"
        )


_BUILD_DIR = Path(tempfile.gettempdir()) / "manipure-cuda-on-cpu"
_modules: dict[str, Module] = {}


def module(source: str) -> Module:
    """The compiled module of ``source`` (cached in the process and, by content, on disk)."""
    if source not in _modules:
        _BUILD_DIR.mkdir(exist_ok=True)
        _modules[source] = Module(source, _BUILD_DIR)
    return _modules[source]


def launch(file: str, name: str, device: torch.device, grid: int, args: tuple, shared_bytes: int) -> None:
    """``cuda_ops._launch``, run on the CPU: same arguments, same limits (block size, shared memory)."""
    from manipure_fast.ops import cuda_ops

    if shared_bytes > cuda_ops.MAX_SHARED_BYTES:
        raise RuntimeError(f"{name} asks for {shared_bytes} bytes of shared memory, over the kernel's limit")
    module(cuda_ops.kernel_source(file)).kernel(name)(grid, cuda_ops.THREADS, args, shared_bytes)
