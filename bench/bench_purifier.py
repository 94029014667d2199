"""End-to-end purifier benchmark against the reference-structure baseline (PERFORMANCE.md T4, T6, T8).

    python bench/bench_purifier.py --model ddpmpp --preset cifar10 --batch 64      # on a GPU
    python bench/bench_purifier.py --smoke          # anywhere, tiny, writes nothing

Models are randomly initialised at the published architectures (weights do not change speed):
``ddpmpp`` = DDPM++ deep (106.6 M, CIFAR-10), ``adm`` = ADM-256 (552.8 M, ImageNet).

Providers (one ensemble member, same schedule, model, batch and seed):
- ``reference-structure``: the baseline shaped like the reference purifier (SPEC §2.4);
- ``torch-eager``: the vectorised reference path (batched FFTs, cached masks, batched model calls);
- ``fused``: the production sampler on the triton backend;
- ``fused-bf16``: the same with the model in bf16 and channels_last (spectral math stays fp32).

Each provider is gated first: its output must match torch-eager given the same recorded noise
(1e-4 for fp32 providers; bf16 is reported, not gated, since a bf16 model changes the result).
Timing: CUDA events around each of ``--repeats`` purifications (the baseline: ``--baseline-repeats``,
it is slow) after ``--warmup`` purifications; images/s, ms per step, peak memory. "model alone" times
the same number of model calls on the same inputs, for the non-model overhead fraction (T4).
Rows with provenance go to ``bench/results/purifier-<gpu>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.reference_structure import ReferenceStructurePurifier  # noqa: E402
from bench.bench_ops import provenance  # noqa: E402
from manipure_fast import PurifierConfig, RecordedNoise, Round  # noqa: E402
from manipure_fast.models.adm import ADMConfig, ADMUNet  # noqa: E402
from manipure_fast.models.ddpmpp import DDPMpp, DDPMppConfig  # noqa: E402
from manipure_fast.noise import GlobalNoise  # noqa: E402
from manipure_fast.reference import purify_diffusion as reference_purify  # noqa: E402
from manipure_fast.sampler import purify_diffusion as fused_purify  # noqa: E402


def build_model(kind: str, smoke: bool) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    if kind == "ddpmpp":
        cfg = DDPMppConfig(nf=16, num_res_blocks=1) if smoke else DDPMppConfig()
        return DDPMpp(cfg).eval(), (3, 32, 32)
    if kind == "adm":
        cfg = (
            ADMConfig(
                image_size=32,
                model_channels=32,
                num_res_blocks=1,
                attention_ds=(2, 4),
                channel_mult=(1, 1, 2),
                num_head_channels=16,
            )
            if smoke
            else ADMConfig()
        )
        return ADMUNet(cfg).eval(), (3, cfg.image_size, cfg.image_size)
    raise ValueError(f"unknown model {kind!r}")


def count_steps(config: PurifierConfig) -> int:
    return sum(len(r.timesteps) for r in config.rounds)


class Timer:
    def __init__(self, device):
        self.device = device

    def __call__(self, fn, repeats: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
        return sorted(samples)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ddpmpp", choices=["ddpmpp", "adm"])
    parser.add_argument("--preset", default="cifar10", choices=["cifar10", "cifar10_v2", "imagenet"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--providers", default="reference-structure,torch-eager,fused,fused-bf16")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model and schedule on any device; writes nothing"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("timings need a CUDA device; use --smoke to check the code path on a CPU")

    model, (c, h, w) = build_model(args.model, args.smoke)
    model = model.to(device).requires_grad_(False)
    config = PurifierConfig.preset(args.preset, model_resolution=None)
    if args.smoke:
        config = config.replace(rounds=(Round.from_total(20, 2),))
        args.batch, args.repeats, args.baseline_repeats, args.warmup = 2, 1, 1, 0
    steps = count_steps(config)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, c, h, w, device=device, generator=gen) * 2 - 1
    draws = sum(1 + 2 * len(r.timesteps) for r in config.rounds)
    recorded = [torch.randn(x.shape, device=device, generator=gen) for _ in range(draws)]
    bf16_model = None

    def run(provider: str, noise):
        nonlocal bf16_model
        with torch.no_grad():
            if provider == "reference-structure":
                return ReferenceStructurePurifier(model, config).purify_diffusion(x, noise)
            if provider == "torch-eager":
                return reference_purify(model, x, config, noise)
            if provider == "fused":
                return fused_purify(model, x, config, noise, backend="triton")
            if provider == "fused-bf16":
                if bf16_model is None:
                    import copy

                    bf16_model = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
                return fused_purify(bf16_model, x, config, noise, backend="triton")
        raise ValueError(provider)

    expected = run("torch-eager", RecordedNoise(recorded))
    timer = Timer(device)
    meta = provenance(device)
    rows = []
    for provider in args.providers.split(","):
        err = (run(provider, RecordedNoise(recorded)) - expected).abs().max().item()
        if provider != "fused-bf16" and err > 1e-4:
            print(f"RED GATE {provider}: max err {err:.3g} vs torch-eager; not timed")
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        repeats = args.baseline_repeats if provider == "reference-structure" else args.repeats
        samples = timer(
            lambda p=provider: run(p, GlobalNoise()),
            repeats,
            1 if provider == "reference-structure" else args.warmup,
        )
        p50 = samples[len(samples) // 2]
        row = dict(
            op="purify",
            provider=provider,
            model=args.model,
            preset=args.preset,
            batch=args.batch,
            shape=[args.batch, c, h, w],
            steps=steps,
            repeats=repeats,
            p50_ms=p50,
            p20_ms=samples[len(samples) // 5],
            p80_ms=samples[min(len(samples) - 1, (4 * len(samples)) // 5)],
            images_per_s=args.batch / (p50 / 1e3),
            ms_per_step=p50 / steps,
            max_err_vs_torch_eager=err,
            peak_memory_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        )
        rows.append(row)
        print(
            f"{provider:20s} p50 {p50:10.1f} ms  {row['images_per_s']:8.1f} img/s  "
            f"{row['ms_per_step']:7.2f} ms/step  err {err:.1e}"
        )

    # The model alone: the same number of (batched, 2B) model calls the fused sampler makes.
    pair = torch.cat([x, x])
    t_pair = torch.full((pair.shape[0],), 10.0, device=device)
    with torch.no_grad():
        model_samples = timer(lambda: [model(pair, t_pair) for _ in range(steps)], args.repeats, args.warmup)
    model_ms = model_samples[len(model_samples) // 2]
    print(f"{'model alone':20s} p50 {model_ms:10.1f} ms  ({steps} calls on 2B)")
    base = {r["provider"]: r["p50_ms"] for r in rows}
    for r in rows:
        r["model_alone_ms"] = model_ms
        r["non_model_overhead_fraction"] = (r["p50_ms"] - model_ms) / model_ms
        if "reference-structure" in base:
            r["speedup_vs_reference_structure"] = base["reference-structure"] / r["p50_ms"]
    if args.smoke:
        print(f"smoke run: {len(rows)} rows, nothing written")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out / f"purifier-{args.model}-{args.preset}-B{args.batch}-{meta['gpu'].replace(' ', '_')}"
        f"-{meta['date']}.json"
    )
    path.write_text(json.dumps([{**row, **meta} for row in rows], indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
