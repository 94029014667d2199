"""pytest-benchmark entry for the end-to-end purifier: ``pytest bench --benchmark-only``.

On a GPU: DDPM++ deep (random weights) at the CIFAR-10 (1000/100) preset, B=64, for the eager and
graph providers of ``bench_purifier.py`` (set ``MANIPURE_BENCH_MODEL=adm`` for ADM-256 at the ImageNet
preset). Without a GPU only ``torch-eager`` runs, on a tiny DDPM++ and schedule (the fused providers
need triton on a GPU, and a CPU graph provider would time no graph). Each benchmark synchronises the
device inside the timed call, so the time is the whole purification's.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.bench_purifier import build_model, make_provider
from manipure_fast import PurifierConfig, Round
from manipure_fast.noise import GlobalNoise

CUDA = torch.cuda.is_available()
MODEL = os.environ.get("MANIPURE_BENCH_MODEL", "ddpmpp")
PRESET = {"ddpmpp": "cifar10", "adm": "imagenet"}[MODEL]


@pytest.fixture(scope="module")
def setup():
    device = torch.device("cuda" if CUDA else "cpu")
    model, (c, h, w) = build_model(MODEL, smoke=not CUDA)
    model = model.to(device).requires_grad_(False)
    config = PurifierConfig.preset(PRESET, model_resolution=None)
    batch = 64
    if not CUDA:
        config, batch = config.replace(rounds=(Round.from_total(20, 2),)), 2
    x = torch.rand(batch, c, h, w, device=device)
    return model, config, device, x


@pytest.mark.parametrize(
    "provider",
    [
        "torch-eager",
        pytest.param("fused", marks=pytest.mark.skipif(not CUDA, reason="fused ops need a GPU here")),
        pytest.param("fused-graph", marks=pytest.mark.skipif(not CUDA, reason="graphs need a GPU")),
        pytest.param("fused-graph-bf16", marks=pytest.mark.skipif(not CUDA, reason="graphs need a GPU")),
    ],
)
def test_purify(benchmark, setup, provider):
    model, config, device, x = setup
    run = make_provider(provider, model, config, device)

    def purify():
        with torch.no_grad():
            out = run(x, GlobalNoise())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    purify()  # compile, capture and warm up outside the timing
    out = benchmark.pedantic(purify, rounds=5 if CUDA else 2, warmup_rounds=1)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    benchmark.extra_info.update(provider=provider, model=MODEL, preset=PRESET, batch=x.shape[0])
