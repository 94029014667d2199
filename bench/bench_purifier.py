"""End-to-end purifier benchmark against the reference-structure baseline (PERFORMANCE.md T4-T8).

    python bench/bench_purifier.py --model ddpmpp --preset cifar10 --batch 1,8,64      # on a GPU
    python bench/bench_purifier.py --model adm --preset imagenet --batch 64
    python bench/bench_purifier.py --smoke          # anywhere, tiny, writes nothing
    python bench/plot_throughput.py bench/results/purifier-*.json   # images/s against batch size

Models are randomly initialised at the published architectures (weights do not change speed):
``ddpmpp`` = DDPM++ deep (106.6 M, CIFAR-10), ``adm`` = ADM-256 (552.8 M, ImageNet).

Providers (one ensemble member, same schedule, model, batch and seed; images in [0, 1]):
- ``reference-structure``: the baseline shaped like the reference purifier (SPEC §2.4);
- ``torch-eager``: the vectorised reference path (batched FFTs, cached masks, batched model calls);
- ``fused``: the production sampler on the triton backend, eager;
- ``fused-bf16``: the same with a bf16 channels_last model;
- ``fused-graph``: ``GraphedPurifier``, fp32-faithful, the whole purification as one CUDA graph;
- ``fused-graph-bf16``: the same with the bf16 model (spectral math stays fp32).

Each provider is gated first: its output must match torch-eager given the same recorded noise
(1e-4; bf16 providers are reported, not gated, since a bf16 model changes the result).
Timing: CUDA events around each of ``--repeats`` purifications (the baseline:
``--baseline-repeats``, it is slow) after ``--warmup`` purifications; the median with p20/p80.
"model alone" times the same number of 2B model calls in the provider's precision, captured as a
graph for graph providers, so the non-model overhead fraction (T4) compares like with like.
Peak memory (T8) is the allocator's peak from the provider's first call (capture included).
Rows with provenance go to ``bench/results/purifier-<model>-<preset>-<gpu>-<date>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines.reference_structure import ReferenceStructurePurifier  # noqa: E402
from bench.bench_ops import provenance, write_rows  # noqa: E402
from manipure_fast import GraphedPurifier, Purifier, PurifierConfig, RecordedNoise, Round  # noqa: E402
from manipure_fast.models.adm import ADMConfig, ADMUNet  # noqa: E402
from manipure_fast.models.ddpmpp import DDPMpp, DDPMppConfig  # noqa: E402
from manipure_fast.noise import GlobalNoise, draw_labels  # noqa: E402
from manipure_fast.precision import prepare_model  # noqa: E402
from manipure_fast.purifier import purify_images, to_classifier_range, to_diffusion_range  # noqa: E402
from manipure_fast.reference import purify_diffusion as reference_purify  # noqa: E402

PROVIDERS = ("reference-structure", "torch-eager", "fused", "fused-bf16", "fused-graph", "fused-graph-bf16")
DEFAULT_PROVIDERS = PROVIDERS
# T8 compares each graph provider's peak memory with its eager twin's.
EAGER_TWIN = {"fused-graph": "fused", "fused-graph-bf16": "fused-bf16"}
GATE_ATOL = 1e-4


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


def make_provider(name: str, model: torch.nn.Module, config: PurifierConfig, device: torch.device):
    """A callable ``run(x01, noise) -> purified x01`` for one provider (inference only)."""
    if name == "reference-structure":
        baseline = ReferenceStructurePurifier(model, config)
        return lambda x, noise: to_classifier_range(baseline.purify_diffusion(to_diffusion_range(x), noise))
    if name == "torch-eager":
        return lambda x, noise: to_classifier_range(
            reference_purify(model, to_diffusion_range(x), config, noise)
        )
    if name in ("fused", "fused-bf16"):
        fused_model = prepare_model(model, "bf16" if name == "fused-bf16" else "fp32")
        return lambda x, noise: purify_images(fused_model, x, config, noise, "triton")
    if name in ("fused-graph", "fused-graph-bf16"):
        precision = "bf16" if name == "fused-graph-bf16" else "fp32"
        graphed = GraphedPurifier(
            Purifier(model, config, backend="triton"), precision=precision, capture=device.type == "cuda"
        )
        return lambda x, noise: graphed.purify(x, noise=noise, check_values=False)
    raise ValueError(f"unknown provider {name!r}; choose from {PROVIDERS}")


class Timer:
    """Milliseconds per call: CUDA events on a GPU, perf_counter elsewhere; sorted samples."""

    def __init__(self, device: torch.device):
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


def percentile(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(q * len(samples)))]


def model_alone_fn(model, precision: str, x: torch.Tensor, steps: int, graph: bool):
    """The provider's model calls alone: ``steps`` calls on 2B images (captured when ``graph``)."""
    fast = prepare_model(model, precision)
    pair = torch.cat([x, x]) * 2 - 1
    t_pair = torch.full((pair.shape[0],), 10.0, device=x.device)

    def calls():
        for _ in range(steps):
            fast(pair, t_pair)

    if not graph:
        return calls
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        calls()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        calls()
    return cuda_graph.replay


def bench_batch(args, model, config, shape, device, timer) -> list[dict]:
    batch = shape[0]
    steps = count_steps(config)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(shape, device=device, generator=gen)
    labels = draw_labels(config)
    recorded = [torch.randn(shape, device=device, generator=gen) for _ in labels]
    rows = []
    with torch.no_grad():
        expected = make_provider("torch-eager", model, config, device)(x, RecordedNoise(recorded, labels))
        for name in args.providers:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            run = make_provider(name, model, config, device)
            err = (run(x, RecordedNoise(recorded, labels)) - expected).abs().max().item()
            low_precision = name.endswith("bf16")
            if not low_precision and err > GATE_ATOL:
                print(f"RED GATE {name} B={batch}: max err {err:.3g} vs torch-eager; not timed")
                continue
            baseline = name == "reference-structure"
            repeats = args.baseline_repeats if baseline else args.repeats
            samples = timer(lambda run=run: run(x, GlobalNoise()), repeats, 1 if baseline else args.warmup)
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
            graph = name.startswith("fused-graph") and device.type == "cuda"
            alone = timer(
                model_alone_fn(model, "bf16" if low_precision else "fp32", x, steps, graph),
                args.repeats,
                args.warmup,
            )
            p50, model_ms = percentile(samples, 0.5), percentile(alone, 0.5)
            rows.append(
                dict(
                    op="purify",
                    provider=name,
                    model=args.model,
                    preset=args.preset,
                    batch=batch,
                    shape=list(shape),
                    steps=steps,
                    model_calls=steps * (2 if config.exchange and config.reference == "renoised" else 1),
                    repeats=repeats,
                    p50_ms=p50,
                    p20_ms=percentile(samples, 0.2),
                    p80_ms=percentile(samples, 0.8),
                    images_per_s=batch / (p50 / 1e3),
                    ms_per_step=p50 / steps,
                    model_alone_ms=model_ms,
                    model_alone_captured=graph,
                    non_model_overhead_fraction=(p50 - model_ms) / model_ms,
                    max_err_vs_torch_eager=err,
                    gated=not low_precision,
                    peak_memory_bytes=peak,
                )
            )
            print(
                f"B={batch:<4d} {name:20s} p50 {p50:10.2f} ms  {rows[-1]['images_per_s']:9.1f} img/s  "
                f"{p50 / steps:7.3f} ms/step  model alone {model_ms:9.2f} ms  err {err:.1e}"
            )
    base = {r["provider"]: r for r in rows}
    for r in rows:
        if "reference-structure" in base:
            r["speedup_vs_reference_structure"] = base["reference-structure"]["p50_ms"] / r["p50_ms"]
        twin = base.get(EAGER_TWIN.get(r["provider"], ""))
        if twin and twin["peak_memory_bytes"] and r["peak_memory_bytes"]:
            r["peak_memory_vs_eager_twin"] = r["peak_memory_bytes"] / twin["peak_memory_bytes"]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ddpmpp", choices=["ddpmpp", "adm"])
    parser.add_argument("--preset", default="cifar10", choices=["cifar10", "cifar10_v2", "imagenet"])
    parser.add_argument("--batch", default="64", help="comma list of batch sizes, e.g. 1,8,64,256")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS))
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model and schedule on any device; writes nothing"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.providers = [p for p in args.providers.split(",") if p]
    unknown = set(args.providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("timings need a CUDA device; use --smoke to check the code path on a CPU")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        skipped = [p for p in args.providers if p.startswith("fused")]
        args.providers = [p for p in args.providers if not p.startswith("fused")]
        print(f"no GPU and TRITON_INTERPRET is not 1: skipping {skipped}")

    model, (c, h, w) = build_model(args.model, args.smoke)
    model = model.to(device).requires_grad_(False)
    # The ImageNet preset's 224 -> 256 resize is not part of the timed purification here.
    config = PurifierConfig.preset(args.preset, model_resolution=None)
    batches = [int(b) for b in args.batch.split(",")]
    if args.smoke:
        config = config.replace(rounds=(Round.from_total(20, 2),))
        batches, args.repeats, args.baseline_repeats, args.warmup = [2], 1, 1, 1
    timer = Timer(device)
    path, meta = None, provenance(device)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        gpu = meta["gpu"].replace(" ", "_")
        path = args.out / f"purifier-{args.model}-{args.preset}-{gpu}-{meta['date']}.json"
    rows = []
    for batch in batches:
        rows += bench_batch(args, model, config, (batch, c, h, w), device, timer)
        if path is not None:
            write_rows(path, rows, meta)  # after each batch size: a cut-short run keeps its rows
    if args.smoke:
        print(f"smoke run: {len(rows)} rows, nothing written")
        return
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
