"""Compile every Triton kernel for an NVIDIA GPU on a machine without one, and report each
compiled kernel's registers, spills and shared memory.

    python bench/compile_sm90.py                    # sm_90 (H100/H200), a table on stdout
    python bench/compile_sm90.py --json out.json    # also the rows as JSON
    python bench/compile_sm90.py --arch 100         # another architecture
    python bench/compile_sm90.py --from-tests tests/test_triton_ops.py   # what those tests launch

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

from bench.kernel_stubs import kernels_replaced  # noqa: E402
from bench.record_triton_launches import describe_argument  # noqa: E402
from manipure_fast.ops import triton_exchange, triton_mani  # noqa: E402
from manipure_fast.reference.schedule import step_coefficients  # noqa: E402

# The tensor types the kernels take (the ops hand them fp32 planes and int32/int64 tables).
_DTYPES = {"float32": "fp32", "int32": "i32", "int64": "i64"}


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, kernel, calls: list):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.kernel, args, kwargs))


def _signature(kernel, args, kwargs):
    """(signature, constexprs, options) for ``triton.compile`` from one recorded call, typed as
    ``--from-tests`` types a recorded launch."""
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(kernel.arg_names, args)) | kwargs
    params = [describe_argument(p.name, values[p.name], p.is_constexpr) for p in kernel.params]
    return (*_recorded_signature(dict(params=params)), options)


def _record(launch) -> list:
    """Run ``launch()`` with every kernel module's kernels replaced by recorders."""
    calls: list = []
    with kernels_replaced(lambda kernel: _Recorder(kernel, calls)):
        launch()
    return calls


def _planes(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(5)]


def _exchange_case(shape, eps_ref=True, philox=False, backward=False, **options):
    params = triton_exchange.ExchangeParams.from_step(step_coefficients(49, 39, eta=1.0), **options)
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
    "mani backward imagenet": _mani_case(IMAGENET, backward=True),
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


def _target(arch: str):
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter's kernels cannot be compiled")
    target = GPUTarget("cuda", int(arch), 32)
    return target, triton.compiler.make_backend(target)


def _compile_row(label, kernel, signature, constexprs, options, target, backend, ptxas_report) -> dict:
    """Compile one specialisation; its row (time, warps, shared memory, and ptxas's counts)."""
    import triton

    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    started = time.perf_counter()
    compiled = triton.compile(source, target=target, options=backend.parse_options(options).__dict__)
    seconds = time.perf_counter() - started
    ptx_arch = re.search(r"\.target\s+sm_(\w+)", compiled.asm["ptx"]).group(1)
    return dict(
        case=label,
        kernel=kernel.__name__,
        arch=f"sm_{ptx_arch}",
        num_warps=compiled.metadata.num_warps,
        shared_bytes=compiled.metadata.shared,
        compile_s=round(seconds, 2),
        constexprs={k: v for k, v in constexprs.items() if not isinstance(v, str) or len(v) < 16},
        **(_ptxas_report(compiled.asm["ptx"], ptx_arch) if ptxas_report else {}),
    )


def compile_all(
    arch: str = "90", cases: dict | None = None, on_row=None, ptxas_report: bool = True
) -> list[dict]:
    target, backend = _target(arch)
    rows = []
    for label, launch in (cases or CASES).items():
        for kernel, args, kwargs in _record(launch):
            signature, constexprs, options = _signature(kernel, args, dict(kwargs))
            rows.append(
                _compile_row(label, kernel, signature, constexprs, options, target, backend, ptxas_report)
            )
            if on_row is not None:
                on_row(rows[-1])
    return rows


def record_test_launches(test_paths: list[str]) -> list[dict]:
    """Run the tests under the interpreter with ``bench/record_triton_launches.py`` and return the
    distinct kernel specialisations they launched."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "launches.json"
        env = dict(os.environ, TRITON_INTERPRET="1", MANIPURE_RECORD_LAUNCHES=str(out))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "bench.record_triton_launches", *test_paths]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the recorded test run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def _recorded_signature(variant: dict):
    """(signature, constexprs) for ``triton.compile`` from one recorded specialisation; integers
    equal to 1 are constexprs, as a compiled launch specialises them."""
    signature, constexprs = {}, {}
    for param in variant["params"]:
        name, kind = param["name"], param["kind"]
        if kind == "constexpr" or (kind == "int" and param["one"]):
            signature[name] = "constexpr"
            constexprs[name] = param.get("value", 1)
        elif kind == "tensor":
            signature[name] = "*" + _DTYPES[param["dtype"]]
        elif kind == "int":
            signature[name] = "i64" if param["wide"] else "i32"
        else:
            signature[name] = {"bool": "u1", "float": "fp32"}[kind]  # as Triton's launcher types them
    return signature, constexprs


def compile_recorded(
    variants: list[dict], arch: str = "90", on_row=None, ptxas_report: bool = True
) -> list[dict]:
    """Compile every recorded specialisation; a compile error is a row with ``error``."""
    import importlib

    target, backend = _target(arch)
    rows = []
    for variant in variants:
        kernel = getattr(importlib.import_module(variant["module"]), variant["kernel"])
        signature, constexprs = _recorded_signature(variant)
        plane = "x".join(str(constexprs[k]) for k in ("H", "W") if k in constexprs)
        label = f"tests {plane or variant['kernel']}, {variant['launches']} launches"
        try:
            row = _compile_row(
                label, kernel, signature, constexprs, variant["options"], target, backend, ptxas_report
            )
        except Exception as error:  # noqa: BLE001 - a compile failure is the finding to report
            row = dict(case=label, kernel=variant["kernel"], constexprs=constexprs, error=repr(error)[:2000])
        rows.append(row)
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _print_row(r: dict) -> None:
    if "error" in r:
        print(f"{r['case']:38s} {r['kernel']:32s} FAILED {r['error'][:300]}", flush=True)
        return
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
    parser.add_argument(
        "--from-tests",
        nargs="+",
        metavar="TEST",
        help="instead of CASES, compile every specialisation these tests launch under the interpreter",
    )
    args = parser.parse_args(argv)
    cases = CASES
    if args.cases:
        unknown = [c for c in args.cases.split(",") if c not in CASES]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
        cases = {c: CASES[c] for c in args.cases.split(",")}
    header = f"{'case':38s} {'kernel':32s} {'arch':7s} warps regs  spill st/ld  smem B  compile s"
    if args.from_tests:
        variants = record_test_launches(args.from_tests)
        print(f"{len(variants)} distinct specialisations launched by {' '.join(args.from_tests)}", flush=True)
        print(header, flush=True)
        rows = compile_recorded(variants, args.arch, on_row=_print_row, ptxas_report=not args.no_ptxas_report)
        failed = [r for r in rows if "error" in r]
        total = sum(r.get("compile_s", 0) for r in rows)
        print(f"compiled {len(rows) - len(failed)} of {len(rows)} in {total:.0f} s; {len(failed)} failed")
    else:
        print(header, flush=True)
        rows = compile_all(args.arch, cases, on_row=_print_row, ptxas_report=not args.no_ptxas_report)
        failed = []
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
        if args.from_tests:
            meta["tests"] = args.from_tests
        args.json.write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
