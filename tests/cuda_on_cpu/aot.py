"""The ahead-of-time library (kernels/cuda/torch_library.cpp and launchers.cu), built for the CPU:
its torch ops, the launchers and the kernels, so the C++ path from the op schemas down to each
kernel's parameters runs in CI. The library's real build (CMake, nvcc) is tested in
test_cuda_library.py; this one is compiled by g++ from the same sources with four textual changes,
each checked to apply:

- the namespace ``manipure_aot`` becomes ``manipure_aot_on_cpu`` (the real library may be loaded in
  the same process) and its CUDA implementations register for the CPU;
- the ops' device check asks for CPU tensors, and the current stream is a null handle;
- ``kernel<<<...>>>(...)`` launches go through ``chevron.h`` to the CPU runtime (``runtime.h``),
  with a stand-in ``cuda_runtime.h`` (``include/``), and with the block count of the kernel's
  cluster, which its source declares.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sysconfig
from pathlib import Path

import torch

from . import _BUILD_DIR, _DYNAMIC_SHARED, COMPILE_FLAGS, RUNTIME, cluster_blocks

NAMESPACE = "manipure_aot_on_cpu"
HERE = Path(__file__).resolve().parent
_CHEVRON = re.compile(r"(\w+)<<<(.*?)>>>\(", re.S)
_STREAM = (
    "  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);\n"
    "  return static_cast<cudaStream_t>(cuda.getStream(x.device()).native_handle());"
)


def _replace(text: str, old: str, new: str, what: str) -> str:
    if old not in text:
        raise RuntimeError(
            f"cannot build the AOT library for the CPU: {what} ({old!r}) is gone from the source"
        )
    return text.replace(old, new)


def sources() -> tuple[str, str]:
    """(the kernels with their launchers, the torch ops), rewritten for the CPU."""
    from manipure_fast.ops import cuda_ops

    launchers = _DYNAMIC_SHARED.sub(
        r"\1* \2 = static_cast<\1*>(cuda_on_cpu::dynamic_shared());", cuda_ops.kernel_source("launchers.cu")
    )
    # launchers.h, inlined into both files, guards itself with #pragma once: moot in one file.
    launchers = launchers.replace("#pragma once", "")
    clusters = cluster_blocks(launchers)
    launchers, launches = _CHEVRON.subn(
        lambda m: f"cuda_on_cpu::chevron({m[1]}, {clusters[m[1]]}, {m[2]})(", launchers
    )
    if launches == 0:
        raise RuntimeError("cannot build the AOT library for the CPU: launchers.cu launches no kernel")
    ops = cuda_ops.kernel_source("torch_library.cpp").replace("#pragma once", "")
    ops = _replace(ops, "(manipure_aot,", f"({NAMESPACE},", "the library's namespace")
    ops = _replace(ops, f"({NAMESPACE}, CUDA, m)", f"({NAMESPACE}, CPU, m)", "the CUDA implementations")
    ops = _replace(ops, ".is_cuda()", ".is_cpu()", "the ops' device check")
    ops = _replace(ops, _STREAM, "  (void)x;\n  return nullptr;", "the current stream")
    return launchers, ops


@functools.lru_cache(maxsize=1)
def load() -> object:
    """Builds (once per content, cached on disk) and loads the library; returns
    ``torch.ops.manipure_aot_on_cpu``."""
    launchers, ops = sources()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    inputs = "".join(
        p.read_text() for p in (RUNTIME, HERE / "chevron.h", HERE / "include" / "cuda_runtime.h")
    )
    digest = hashlib.sha256((inputs + launchers + ops + torch.__version__).encode()).hexdigest()[:16]
    _BUILD_DIR.mkdir(exist_ok=True)
    library = _BUILD_DIR / f"aot-{digest}.so"
    if not library.exists():
        from torch.utils.cpp_extension import include_paths

        work = _BUILD_DIR / f"aot-{digest}-{os.getpid()}"
        work.mkdir(exist_ok=True)
        common = ["g++", *COMPILE_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-I", str(HERE / "include")]
        (work / "launchers.cpp").write_text(launchers)
        (work / "ops.cpp").write_text(ops)
        torch_includes = [f"-isystem{p}" for p in (*include_paths(), sysconfig.get_paths()["include"])]
        steps = [
            [*common, "-include", str(RUNTIME), "-include", str(HERE / "chevron.h"), "-c",
             str(work / "launchers.cpp"), "-o", str(work / "launchers.o")],
            [*common, *torch_includes, "-c", str(work / "ops.cpp"), "-o", str(work / "ops.o")],
            ["g++", "-shared", str(work / "launchers.o"), str(work / "ops.o"), "-o", str(work / "aot.so"),
             f"-L{Path(torch.__file__).parent / 'lib'}", "-lc10", "-ltorch", "-ltorch_cpu"],
        ]  # fmt: skip
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"building the AOT library for the CPU failed:\n{result.stderr[-4000:]}")
        os.replace(work / "aot.so", library)
    torch.ops.load_library(str(library))
    return getattr(torch.ops, NAMESPACE)
