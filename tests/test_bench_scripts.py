"""The benchmark scripts' code paths on the CPU (they time nothing meaningful here and write
nothing): the purifier benchmark's smoke mode, gated providers included, and the throughput plot."""

from __future__ import annotations

import json

from bench import bench_purifier, plot_throughput


def test_purifier_benchmark_smoke_gates_every_provider(capsys):
    bench_purifier.main(["--smoke", "--providers", "torch-eager,fused,fused-graph,fused-graph-bf16"])
    out = capsys.readouterr().out
    assert "RED GATE" not in out
    for provider in ("torch-eager", "fused ", "fused-graph ", "fused-graph-bf16"):
        assert f"B=2    {provider}" in out
    assert "smoke run: 4 rows, nothing written" in out


def test_throughput_plot_draws_measured_rows(tmp_path):
    rows = [
        dict(
            op="purify", model="ddpmpp", preset="cifar10", provider=p, batch=b, images_per_s=b * k, gpu="test"
        )
        for p, k in (("torch-eager", 1.0), ("fused-graph", 9.0))
        for b in (1, 8, 64)
    ]
    results = tmp_path / "purifier.json"
    results.write_text(json.dumps(rows))
    out = tmp_path / "throughput.png"
    plot_throughput.main([str(results), "-o", str(out)])
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
