"""NVRTC, the compiler behind the cuda backend's JIT loader (CuPy's ``RawModule``), called through
ctypes from the ``nvidia-cuda-nvrtc`` wheel. It needs no GPU and no driver, so the CPU tests can
compile the kernels with the very compiler the JIT uses on a GPU, which nvcc only approximates
(NVRTC has no host headers, and takes its own options)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from dataclasses import dataclass
from pathlib import Path


def find_library() -> Path | None:
    """``libnvrtc.so`` from the ``nvidia-cuda-nvrtc`` wheel (CUDA 13 layout), else the system's."""
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        found = sorted(Path(root).glob("cu13/lib/libnvrtc.so.*"))
        if found:
            return found[0]
    name = ctypes.util.find_library("nvrtc")
    return Path(name) if name else None


@dataclass
class Compiled:
    ok: bool
    log: str
    ptx: str  # empty unless the architecture was virtual (compute_XX) and it compiled


def compile_source(library: Path, source: str, name: str, options: tuple[str, ...]) -> Compiled:
    """Compile ``source`` with NVRTC and ``options``; its log, and the PTX for a virtual target."""
    lib = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        encoded = [option.encode() for option in options]
        status = lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        ptx = ""
        if status == 0 and any(option.startswith("-arch=compute_") for option in options):
            lib.nvrtcGetPTXSize(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(program, buffer)
            ptx = buffer.value.decode()
        return Compiled(ok=status == 0, log=log.value.decode(errors="replace"), ptx=ptx)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
