"""Compile every Triton kernel for an NVIDIA GPU on a machine without one, and report each
compiled kernel's registers, spills and shared memory.

    python bench/compile_sm90.py                    # sm_90 (H100/H200), a table on stdout
    python bench/compile_sm90.py --json out.json    # also the rows as JSON
    python bench/compile_sm90.py --arch 100         # another architecture

Triton compiles to PTX and runs the ``ptxas`` it ships, so neither a GPU nor a driver is needed.
The launch arguments are not written out by hand: each case runs the ops' real launcher
(``manipure_fast.ops.triton_*``) on CPU tensors of the target shape, with the kernel replaced by
a recorder, and the recorded arguments become the compile signature. So a compile error here is
one that the first GPU launch would hit, with the same constexprs. It must run without
``TRITON_INTERPRET=1``, under which ``triton.jit`` gives interpreted functions.

Registers and spills come from ``ptxas -v`` on the compiled PTX; they are the input to tile and
warp tuning, which needs the GPU for the timing itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manipure_fast.ops import triton_exchange, triton_mani  # noqa: E402
from manipure_fast.reference.schedule import noise_coefficients, step_coefficients  # noqa: E402

_DTYPES = {torch.float32: "fp32", torch.int32: "i32", torch.int64: "i64"}


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, kernel, calls: list):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.kernel, args, kwargs))


def _signature(kernel, args, kwargs):
    """(signature, constexprs, options) for ``triton.compile`` from one recorded call."""
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(kernel.arg_names, args)) | kwargs
    signature, constexprs = {}, {}
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _DTYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {param.name}={value!r}")
    return signature, constexprs, options


def _record(launch) -> list:
    """Run ``launch()`` with every kernel module's kernels replaced by recorders."""
    import importlib

    calls: list = []
    patched = []
    for name in (
        "exchange_update",
        "exchange_update_backward",
        "mani_noise",
        "mani_noise_backward",
        "mani_noise_large",
        "mani_noise_rows",
        "mani_noise_rows_backward",
    ):
        module = importlib.import_module(f"manipure_fast.kernels.triton.{name}")
        for attr, value in vars(module).items():
            if attr.endswith("_kernel") and hasattr(value, "params"):
                patched.append((module, attr, value))
                setattr(module, attr, _Recorder(value, calls))
    try:
        launch()
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
    return calls


def _planes(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(5)]


def _exchange_case(shape, eps_ref=True, philox=False, backward=False, **options):
    step = step_coefficients(49, 39, eta=1.0)
    ref = noise_coefficients(50)
    params = triton_exchange.ExchangeParams(
        step.sqrt_abar,
        step.sqrt_one_minus_abar,
        ref.signal,
        ref.noise,
        step.sqrt_abar_next,
        step.c1,
        step.c2,
        **options,
    )
    x_t, eps, ref_t, eps_r, z = _planes(shape)
    eps_r = eps_r if eps_ref else None
    if backward:
        return lambda: triton_exchange.launch_exchange_update_backward(z, x_t, eps, ref_t, eps_r, params)
    if philox:
        state = torch.tensor([0, 0], dtype=torch.int64)
        return lambda: triton_exchange.launch_exchange_update(
            x_t, eps, ref_t, eps_r, None, state, params, store_noise=True
        )
    return lambda: triton_exchange.launch_exchange_update(x_t, eps, ref_t, eps_r, z, None, params)


def _mani_case(shape, philox=False, backward=False, **options):
    params = triton_mani.ManiParams(999, **options)
    x, z, grad = _planes(shape)[:3]
    path = triton_mani.mani_path(*shape[-2:])
    if backward:
        # The large path's backward is autograd through the reference: it records no kernel.
        launch_backward = triton_mani.BACKWARD_LAUNCHERS[path]
        return lambda: launch_backward(grad, x, z, params, noise_grad=True)
    launch = triton_mani.FORWARD_LAUNCHERS[path]
    if philox:
        state = torch.tensor([0, 0], dtype=torch.int64)
        return lambda: launch(x, None, state, params, store_noise=True)
    return lambda: launch(x, z, None, params)


CIFAR, IMAGENET = (1, 3, 32, 32), (1, 3, 256, 256)
CASES = {
    "exchange cifar": _exchange_case(CIFAR),
    "exchange cifar philox project real": _exchange_case(
        CIFAR, philox=True, phase_mode="project", reconstruct="real"
    ),
    "exchange 31x33 no-eps-ref": _exchange_case((1, 1, 31, 33), eps_ref=False),
    "exchange 128x128": _exchange_case((1, 1, 128, 128)),
    "exchange imagenet": _exchange_case(IMAGENET),
    "exchange backward cifar": _exchange_case(CIFAR, backward=True),
    "exchange backward cifar project real": _exchange_case(
        CIFAR, backward=True, phase_mode="project", reconstruct="real"
    ),
    "exchange backward imagenet": _exchange_case(IMAGENET, backward=True),
    "mani cifar": _mani_case(CIFAR),
    "mani cifar philox kernel-map max": _mani_case(CIFAR, philox=True, weight_map="kernel", normalize="max"),
    "mani 64x64": _mani_case((1, 3, 64, 64)),
    "mani 64x64 philox kernel-map max": _mani_case(
        (1, 3, 64, 64), philox=True, weight_map="kernel", normalize="max"
    ),
    "mani 48x40": _mani_case((1, 3, 48, 40)),
    "mani backward cifar": _mani_case(CIFAR, backward=True),
    "mani backward 64x64": _mani_case((1, 3, 64, 64), backward=True),
    "mani backward 48x40 kernel-map max": _mani_case(
        (1, 3, 48, 40), backward=True, weight_map="kernel", normalize="max"
    ),
    "mani imagenet": _mani_case(IMAGENET),
    "mani imagenet philox none": _mani_case(IMAGENET, philox=True, normalize="none"),
}


def _ptxas_report(ptx: str, arch: str) -> dict:
    """Registers, spill bytes and static shared memory from ``ptxas -v`` on the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(int(re.match(r"\d+", arch).group())).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        done = subprocess.run(
            [ptxas, f"-arch=sm_{arch}", "-v", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    text = done.stderr + done.stdout

    def number(pattern):
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return dict(
        registers=number(r"Used (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        stack_frame=number(r"(\d+) bytes stack frame"),
    )


def compile_all(
    arch: str = "90", cases: dict | None = None, on_row=None, ptxas_report: bool = True
) -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter's kernels cannot be compiled")
    target = GPUTarget("cuda", int(arch), 32)
    backend = triton.compiler.make_backend(target)
    rows = []
    for label, launch in (cases or CASES).items():
        for kernel, args, kwargs in _record(launch):
            signature, constexprs, options = _signature(kernel, args, dict(kwargs))
            source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
            started = time.perf_counter()
            compiled = triton.compile(source, target=target, options=backend.parse_options(options).__dict__)
            seconds = time.perf_counter() - started
            ptx_arch = re.search(r"\.target\s+sm_(\w+)", compiled.asm["ptx"]).group(1)
            rows.append(
                dict(
                    case=label,
                    kernel=kernel.__name__,
                    arch=f"sm_{ptx_arch}",
                    num_warps=compiled.metadata.num_warps,
                    shared_bytes=compiled.metadata.shared,
                    compile_s=round(seconds, 2),
                    constexprs={k: v for k, v in constexprs.items() if not isinstance(v, str) or len(v) < 16},
                    **(_ptxas_report(compiled.asm["ptx"], ptx_arch) if ptxas_report else {}),
                )
            )
            if on_row is not None:
                on_row(rows[-1])
    return rows


def _print_row(r: dict) -> None:
    r = dict(dict(registers=-1, spill_stores=-1, spill_loads=-1), **r)
    print(
        f"{r['case']:38s} {r['kernel']:32s} {r['arch']:7s} {r['num_warps']:5d} {r['registers']:4d} "
        f"{r['spill_stores']:6d}/{r['spill_loads']:<6d} {r['shared_bytes']:7d} {r['compile_s']:8.1f}",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("--cases", help="comma-separated case labels (default: all); see CASES")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--no-ptxas-report", action="store_true", help="skip the second ptxas run (registers, spills)"
    )
    args = parser.parse_args(argv)
    cases = CASES
    if args.cases:
        unknown = [c for c in args.cases.split(",") if c not in CASES]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
        cases = {c: CASES[c] for c in args.cases.split(",")}
    print(f"{'case':38s} {'kernel':32s} {'arch':7s} warps regs  spill st/ld  smem B  compile s", flush=True)
    rows = compile_all(args.arch, cases, on_row=_print_row, ptxas_report=not args.no_ptxas_report)
    if args.json:
        import datetime
        import platform

        from manipure_fast.provenance import git_commit

        meta = dict(
            triton=__import__("triton").__version__,
            torch=torch.__version__,
            python=platform.python_version(),
            commit=git_commit(),
            date=datetime.date.today().isoformat(),
            target=f"cuda sm_{args.arch}",
            gpu=None,
            note="compiled on a CPU machine with Triton's bundled ptxas; nothing ran on a GPU",
        )
        args.json.write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
