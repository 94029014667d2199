"""Benchmark the fused ops against their baselines (PERFORMANCE.md targets T1-T3).

    python bench/bench_ops.py                      # on a GPU: CIFAR B=512 and ImageNet B=64, JSON rows
    python bench/bench_ops.py --sweep              # also the shapes of the auto-dispatch table
    python bench/bench_ops.py --backward           # also forward + backward, what an adaptive attack runs
    python bench/bench_ops.py --smoke              # anywhere: tiny shapes, checks the path, writes nothing

Ops and providers:
- exchange_update: ``reference-structure`` (the per-image, per-channel loop of SPEC §2.4, exchange
  plus update), ``torch-eager`` (the vectorised reference: batched fft2 / mask / ifft2), ``triton``,
  ``cuda`` (the CUDA C++ kernels through the loader ``cuda_ops.active_loader()`` picks, recorded
  as ``cuda_loader``; skipped, with the reason, where they cannot run).
- mani_noise: ``torch-eager``, ``triton`` (one launch up to 64x64; above, ImageNet's planes
  included, cuFFT half-spectrum transforms and two fused kernels) and ``cuda`` (one launch up to 64x64;
  at 256x256 on sm_90 and later, one launch of ``mani_noise_cluster.cu``; otherwise cuFFT and the
  two kernels of ``mani_noise_large.cu``).

Method (STYLE.md): every fast provider is first checked against the reference on the benchmarked
shape (a red gate prints and skips the row); then ``triton.testing.do_bench`` (L2 flushed; median,
p20, p80) after warm-up. GB/s counts each tensor the op must read or write once:
exchange_update reads x_t, eps, ref_t, eps_ref, noise and writes x_next (6 planes, the roofline
of the fused step); mani_noise reads x, noise and writes x_t (3 planes).

``--backward`` adds rows with ``direction="forward+backward"``: the op and the gradients of a
weighted sum of its output for every differentiable input, through ``torch.autograd.grad``. That
is autograd through the reference for ``torch-eager`` and the fused backward kernels for
``triton`` and ``cuda``; each is gated against the reference's gradients (relative to their
largest magnitude). Their GB/s count the forward's planes and the backward's: exchange_update's
backward reads grad, x_t, eps, ref_t, eps_ref and writes four gradients (15 planes in all);
mani_noise's reads grad, x, noise and writes two (8). Rows carry the GPU, SM
count, versions, commit and date; they go to ``bench/results/ops-<gpu>-<date>.json``.
``bench/dispatch_table.py`` turns them into the auto-dispatch table (``--sweep`` measures more plane
sizes and batches for it; the per-plane reference-structure loop is timed on the target shapes only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.reference_structure import ReferenceStructurePurifier  # noqa: E402
from manipure_fast import PurifierConfig, ops  # noqa: E402
from manipure_fast.provenance import git_commit  # noqa: E402
from manipure_fast.reference.schedule import noise_coefficients, step_coefficients  # noqa: E402

# Datasheet HBM bandwidth in GB/s. PERFORMANCE.md gives the H100's (SXM has 132 SMs, PCIe 114).
# The H200 has the H100's 132 SMs but 4.8 TB/s of HBM3e, so the SM count alone would credit it
# with an H100's roofline: the name decides first.
HBM_PEAK_GBPS = {"H200": 4800.0, "H100-132": 3350.0, "H100-114": 2000.0}


def hbm_peak_gbps(name: str, sm_count: int) -> float | None:
    """The roofline's bandwidth for a GPU, or None where this table does not know it."""
    if "H200" in name:
        return HBM_PEAK_GBPS["H200"]
    if "H100" in name:
        return HBM_PEAK_GBPS.get(f"H100-{sm_count}")
    return None


SHAPES = {"cifar-B512": (512, 3, 32, 32), "imagenet-B64": (64, 3, 256, 256)}
SWEEP_SHAPES = {
    f"{h}x{h}-B{b}": (b, 3, h, h)
    for h, batches in ((32, (1, 8, 64)), (64, (1, 8, 64, 256)), (256, (1, 8)))
    for b in batches
}
SMOKE_SHAPES = {  # the three MANI paths
    "smoke-B2": (2, 3, 16, 16),
    "smoke-rows-B1": (1, 1, 48, 40),
    "smoke-large-B1": (1, 1, 72, 72),
}


def provenance(device: torch.device) -> dict:
    info = dict(
        torch=torch.__version__, python=platform.python_version(), date=datetime.date.today().isoformat()
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["commit"] = git_commit()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name, sm_count=props.multi_processor_count, cuda=torch.version.cuda, driver=_driver()
        )
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine())
    return info


def _driver() -> str | None:
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def time_ms(fn, device: torch.device, smoke: bool) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms."""
    if device.type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8]))
    samples = []
    for _ in range(3 if smoke else 20):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))]  # noqa: E731
    return q(0.5), q(0.2), q(0.8)


def exchange_inputs(shape, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, device=device, generator=gen) * s for s in (1.0, 0.8, 1.0, 0.8, 1.0)]


def bench_exchange(label, shape, device, smoke):
    step = step_coefficients(49, 39, eta=1.0)
    x_t, eps, ref_t, eps_ref, z = exchange_inputs(shape, device)
    config = PurifierConfig()
    baseline = ReferenceStructurePurifier(lambda v, t: v, config)
    ref_coef = noise_coefficients(config.forward_noise_steps)

    def structure():
        x0 = (x_t - eps * step.sqrt_one_minus_abar) / step.sqrt_abar
        x_ref0 = (ref_t - eps_ref * ref_coef.noise) / ref_coef.signal
        return step.sqrt_abar_next * baseline._exchange(x_ref0, x0) + step.c1 * z + step.c2 * eps

    providers = {
        "reference-structure": structure,
        "torch-eager": lambda: ops.exchange_update(
            x_t, eps, ref_t, eps_ref, z, step=step, backend="reference"
        ),
        "triton": lambda: ops.exchange_update(x_t, eps, ref_t, eps_ref, z, step=step, backend="triton"),
        "cuda": lambda: ops.exchange_update(x_t, eps, ref_t, eps_ref, z, step=step, backend="cuda"),
    }
    return _run("exchange_update", label, shape, device, smoke, providers, planes=6)


def bench_mani(label, shape, device, smoke):
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.rand(shape, device=device, generator=gen) * 2 - 1
    z = torch.randn(shape, device=device, generator=gen)
    providers = {"torch-eager": lambda: ops.mani_noise(x, 999, z, backend="reference")}
    for backend in ("triton", "cuda"):
        providers[backend] = lambda backend=backend: ops.mani_noise(x, 999, z, backend=backend)
    return _run("mani_noise", label, shape, device, smoke, providers, planes=3)


def bench_exchange_backward(label, shape, device, smoke):
    step = step_coefficients(49, 39, eta=1.0)
    *leaves, z = (t.requires_grad_(i < 4) for i, t in enumerate(exchange_inputs(shape, device)))
    weight = torch.randn(shape, device=device, generator=torch.Generator(device=device).manual_seed(2))

    def gradients(backend):
        out = ops.exchange_update(*leaves, z, step=step, backend=backend)
        return torch.autograd.grad(out, leaves, weight)

    providers = {provider: lambda b=backend: gradients(b) for provider, backend in _BACKWARD_PROVIDERS}
    return _run("exchange_update", label, shape, device, smoke, providers, planes=15, backward=True)


def bench_mani_backward(label, shape, device, smoke):
    gen = torch.Generator(device=device).manual_seed(1)
    x = (torch.rand(shape, device=device, generator=gen) * 2 - 1).requires_grad_()
    z = torch.randn(shape, device=device, generator=gen).requires_grad_()
    weight = torch.randn(shape, device=device, generator=gen)

    def gradients(backend):
        return torch.autograd.grad(ops.mani_noise(x, 999, z, backend=backend), (x, z), weight)

    providers = {provider: lambda b=backend: gradients(b) for provider, backend in _BACKWARD_PROVIDERS}
    return _run("mani_noise", label, shape, device, smoke, providers, planes=8, backward=True)


_BACKWARD_PROVIDERS = (("torch-eager", "reference"), ("triton", "triton"), ("cuda", "cuda"))


def _max_error(result, expected, backward: bool) -> float:
    """The largest absolute difference; for gradients, over all of them and relative to the
    reference's largest gradient (at least 1)."""
    if not backward:
        return (result - expected).abs().max().item()
    scale = max(1.0, max(g.abs().max().item() for g in expected))
    return max((r - e).abs().max().item() for r, e in zip(result, expected)) / scale


def _run(op, label, shape, device, smoke, providers, planes, backward=False):
    rows = []
    direction = "forward+backward" if backward else "forward"
    name = f"{op}+backward" if backward else op
    with torch.set_grad_enabled(backward):
        expected = providers["torch-eager"]()
        sample = expected[0] if backward else expected
        nbytes = planes * torch.Size(shape).numel() * 4
        for provider, fn in providers.items():
            reason = ops.unsupported_reason(provider, op, sample) if provider in ("triton", "cuda") else None
            if reason is not None:
                print(f"{name:24s} {label:14s} {provider:20s} skipped: {reason}")
                continue
            if provider == "reference-structure" and (label not in SHAPES or smoke) and shape[0] > 8:
                continue
            err = _max_error(fn(), expected, backward)
            if err > 1e-4:
                print(f"RED GATE {name} {label} {provider}: max err {err:.3g} vs reference; not timed")
                continue
            p50, p20, p80 = time_ms(fn, device, smoke)
            gbps = nbytes / (p50 * 1e-3) / 1e9
            row = dict(
                op=op,
                direction=direction,
                provider=provider,
                shape=list(shape),
                label=label,
                dtype="float32",
                p50_ms=p50,
                p20_ms=p20,
                p80_ms=p80,
                gb_per_s=gbps,
                max_err_vs_reference=err,
            )
            if provider == "cuda":
                from manipure_fast.ops import cuda_ops

                row["cuda_loader"] = cuda_ops.active_loader()
            if device.type == "cuda":
                props = torch.cuda.get_device_properties(device)
                peak = hbm_peak_gbps(props.name, props.multi_processor_count)
                if peak:
                    row["hbm_peak_gbps"] = peak
                    row["roofline_fraction"] = gbps / peak
                    row["roofline_ms"] = nbytes / (peak * 1e9) * 1e3
            rows.append(row)
            print(f"{name:24s} {label:14s} {provider:20s} p50 {p50:9.3f} ms  {gbps:8.1f} GB/s  err {err:.1e}")
    base = {r["provider"]: r["p50_ms"] for r in rows}
    for r in rows:
        for other in ("reference-structure", "torch-eager"):
            if other in base and r["provider"] != other:
                r[f"speedup_vs_{other}"] = base[other] / r["p50_ms"]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device; writes nothing")
    parser.add_argument("--sweep", action="store_true", help="also the auto-dispatch table's shapes")
    parser.add_argument(
        "--backward", action="store_true", help="also forward + backward of each op (module docstring)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("timings need a CUDA device; use --smoke to check the code path on a CPU")
    shapes = SMOKE_SHAPES if args.smoke else {**SHAPES, **(SWEEP_SHAPES if args.sweep else {})}
    path, meta = None, provenance(device)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"ops-{meta['gpu'].replace(' ', '_')}-{meta['date']}.json"
    rows = []
    for label, shape in shapes.items():
        rows += bench_exchange(label, shape, device, args.smoke)
        rows += bench_mani(label, shape, device, args.smoke)
        if args.backward:
            rows += bench_exchange_backward(label, shape, device, args.smoke)
            rows += bench_mani_backward(label, shape, device, args.smoke)
        if path is not None:
            write_rows(path, rows, meta)
    if args.smoke:
        print(f"smoke run: {len(rows)} rows, nothing written")
        return
    print(f"wrote {path}")


def write_rows(path: Path, rows: list[dict], meta: dict) -> None:
    """Rewrites ``path`` with every row so far, each with the provenance. Called after each shape,
    so that a run cut short by a device-time limit keeps what it measured. Makes the folder
    (``--out`` may name a new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**row, **meta} for row in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
