"""The ahead-of-time CUDA library (root CMakeLists.txt, built through scikit-build-core when
MANIPURE_BUILD_CUDA=1): on a machine with nvcc and CMake, the opt-in wheel builds and carries the
library; the library loads into a CPU torch, registers manipure_aot's ops with the schemas that
cuda_ops calls, and traces through its Meta implementation. Launching needs a GPU
(test_cuda_ops.py runs the same tests through this library and through the JIT)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("nvcc") is None
    or shutil.which("cmake") is None
    or importlib.util.find_spec("scikit_build_core") is None,
    reason="needs nvcc, cmake and scikit-build-core",
)


def _wheel(out: Path, build_cuda: bool) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "MANIPURE_BUILD_CUDA"}
    if build_cuda:
        env["MANIPURE_BUILD_CUDA"] = "1"
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT)]
    result = subprocess.run([*command, "-w", str(out)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def built_library(tmp_path_factory) -> Path:
    """The opt-in wheel's library, unpacked (one build per test session, about 25 s)."""
    folder = tmp_path_factory.mktemp("aot")
    wheel = _wheel(folder, build_cuda=True)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (library,) = [n for n in names if n.startswith("manipure_fast/_cuda_ops") and n.endswith(".so")]
        assert "manipure_fast/kernels/cuda/exchange_update.cu" in names  # the JIT's sources ride along
        archive.extract(library, folder)
    return folder / library


def test_plain_wheel_has_no_compiled_code(tmp_path):
    wheel = _wheel(tmp_path, build_cuda=False)
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert not [n for n in names if n.endswith(".so")]
    for required in ("manipure_fast/kernels/triton/mani_noise.py", "manipure_fast/kernels/cuda/mani_noise.cu",
                     "manipure_fast/weights/fashion_unet.safetensors"):  # fmt: skip
        assert required in names


def _run(library: Path, code: str) -> str:
    env = dict(os.environ, MANIPURE_CUDA_LIBRARY=str(library), MANIPURE_CUDA_LOADER="aot")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_library_registers_its_ops_and_traces_the_cuda_ops_calls(built_library):
    """cuda_ops' launch functions, on meta tensors, reach the library's Meta implementations: the
    Python call matches the C++ schema argument for argument."""
    out = _run(
        built_library,
        """
import torch
from manipure_fast.ops import cuda_ops
assert cuda_ops.aot_unavailable_reason() is None and cuda_ops.active_loader() == "aot"
schema = str(torch.ops.manipure_aot.exchange_update.default._schema)
assert "Tensor? rng_state" in schema and "float[] coefficients" in schema, schema
x = torch.empty(2, 3, 31, 33, device="meta")
rng = torch.empty(2, dtype=torch.int64, device="meta")
y = cuda_ops.launch_exchange_update(x, x, x, None, None, rng, [1.0] * 8, 10.0, 8.0, True, False)
m, drawn = cuda_ops.launch_mani_noise(x, None, rng, 300, 8, 1.8, 1e-6, "width", "spectral", "rms")
m2, none = cuda_ops.launch_mani_noise(x, x, None, 300, 8, 1.8, 1e-6, "count", "kernel", "max")
print(tuple(y.shape), tuple(m.shape), tuple(drawn.shape), tuple(none.shape))
# the large-plane path: rfft2, manipure_aot::mani_band_weights, irfft2, manipure_aot::mani_inject
big = torch.empty(1, 2, 96, 80, device="meta")
m3, drawn3 = cuda_ops.launch_mani_noise(big, None, rng, 300, 8, 1.8, 1e-6, "width", "spectral", "rms")
m4, none4 = cuda_ops.launch_mani_noise(big, big, None, 300, 3, 1.8, 1e-6, "count", "kernel", "none")
print(tuple(m3.shape), tuple(drawn3.shape), tuple(m4.shape), tuple(none4.shape))
# its backward: rfft2, mani_band_weights, irfft2, mani_map_gradient, rfft2, mani_spectrum_gradient, irfft2
g_x, g_z = cuda_ops.launch_mani_noise_backward(big, big, big, 300, 8, 1.8, 1e-6, "width", "spectral", "max",
                                               False, True)
g_x2, none2 = cuda_ops.launch_mani_noise_backward(big, big, big, 300, 3, 1.8, 1e-6, "count", "kernel", "rms",
                                                  False, False)
print(tuple(g_x.shape), tuple(g_z.shape), tuple(g_x2.shape), tuple(none2.shape))
""",
    )
    big = ["(1,", "2,", "96,", "80)"]
    assert out.split() == ["(2,", "3,", "31,", "33)"] * 3 + ["(0,)"] + big * 3 + ["(0,)"] + big * 3 + ["(0,)"]


def test_library_refuses_cpu_tensors_with_a_named_error(built_library):
    out = _run(
        built_library,
        """
import torch
from manipure_fast.ops import cuda_ops
assert cuda_ops.aot_unavailable_reason() is None
x = torch.zeros(1, 1, 8, 8)
try:
    cuda_ops.launch_mani_noise(x, x, None, 300, 4, 1.8, 1e-6, "width", "spectral", "rms")
except NotImplementedError as error:
    print(str(error).splitlines()[0])
""",
    )
    assert "manipure_aot::mani_noise" in out and "CPU" in out


def test_a_missing_library_is_a_reason_not_an_import_error(tmp_path):
    env = dict(os.environ, MANIPURE_CUDA_LIBRARY=str(tmp_path / "absent.so"))
    code = "from manipure_fast.ops import cuda_ops; print(cuda_ops.aot_unavailable_reason())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0 and "MANIPURE_BUILD_CUDA=1" in result.stdout
