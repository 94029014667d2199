"""The benchmark scripts' code paths on the CPU (they time nothing meaningful here and write
nothing): the purifier benchmark's smoke mode, gated providers included, the throughput plot, and
the op benchmark keeping the rows of a run cut short, the compute-sanitizer workload, and the
tuning sweep's variants; and the device session script's command lines."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bench import bench_host_overhead, bench_ops, bench_purifier, plot_throughput, sanitize_ops, tune_triton


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


def test_op_benchmark_keeps_the_rows_of_a_run_cut_short(tmp_path, monkeypatch):
    """A device call that hits its time limit mid-sweep must leave every shape measured so far on disk."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_ops, "provenance", lambda device: dict(gpu="Test GPU", date="2026-01-01"))
    monkeypatch.setattr(bench_ops, "bench_mani", lambda label, *_: [dict(op="mani_noise", shape=label)])

    def exchange(label, *_):
        if label == "imagenet-B64":
            raise KeyboardInterrupt  # what a timeout's signal leaves behind, mid-run
        return [dict(op="exchange_update", shape=label)]

    monkeypatch.setattr(bench_ops, "bench_exchange", exchange)
    with pytest.raises(KeyboardInterrupt):
        bench_ops.main(["--out", str(tmp_path)])
    rows = json.loads((tmp_path / "ops-Test_GPU-2026-01-01.json").read_text())
    assert [(r["op"], r["shape"], r["gpu"]) for r in rows] == [
        ("exchange_update", "cifar-B512", "Test GPU"),
        ("mani_noise", "cifar-B512", "Test GPU"),
    ]


def test_op_benchmark_smoke_gates_and_times_forward_and_backward(capsys):
    """bench_ops.py --smoke --backward on the triton backend under the interpreter: both ops,
    forward and forward + backward, on each MANI path's plane, each within its red gate."""
    bench_ops.main(["--smoke", "--backward"])
    out = capsys.readouterr().out
    assert "RED GATE" not in out
    timed = {tuple(line.split()[:3]) for line in out.splitlines() if line.split()[3:4] == ["p50"]}
    for label in bench_ops.SMOKE_SHAPES:
        for op in ("exchange_update", "mani_noise", "exchange_update+backward", "mani_noise+backward"):
            for provider in ("torch-eager", "triton"):
                assert (op, label, provider) in timed, out


def test_roofline_bandwidth_tells_h200_from_h100():
    assert bench_ops.hbm_peak_gbps("NVIDIA H100 80GB HBM3", 132) == 3350.0
    assert bench_ops.hbm_peak_gbps("NVIDIA H100 PCIe", 114) == 2000.0
    assert bench_ops.hbm_peak_gbps("NVIDIA H200", 132) == 4800.0  # same SM count as the H100 SXM
    assert bench_ops.hbm_peak_gbps("NVIDIA A100-SXM4-80GB", 108) is None  # unknown: no fraction claimed


def test_sanitizer_workload_runs_every_path_forward_and_backward(capsys):
    """The script compute-sanitizer runs on the GPU, here on the triton backend under the
    interpreter, so a broken workload shows up before the device session."""
    sanitize_ops.main(["--backends", "triton", "--device", "cpu"])
    assert "triton: ran 6 shapes, forward and backward" in capsys.readouterr().out


def test_host_overhead_bench_times_every_call_without_running_a_kernel(monkeypatch):
    """bench_host_overhead.py --smoke: a row per call and shape, with the kernels replaced while it
    runs and restored after (a kernel that ran under the interpreter would take seconds)."""
    pytest.importorskip("triton")
    from manipure_fast.kernels.triton import exchange_update

    kernel = exchange_update.exchange_update_kernel
    rows = bench_host_overhead.main(["--smoke"])
    assert exchange_update.exchange_update_kernel is kernel
    assert {(r["label"], r["call"]) for r in rows} == {
        (label, call)
        for label, shape in bench_host_overhead.SHAPES.items()
        for call in bench_host_overhead.calls(shape, torch.device("cpu"))
    }
    assert all(0 < r["host_us_per_call"] < 1e5 for r in rows)


def test_tuning_sweep_runs_every_variant_and_each_reaches_its_kernel(capsys):
    """Every variant of ``bench/tune_triton.py`` launches, matches the shipped choice, and is the
    variant it names: the tile-size variants change the summation order, so they must differ
    from the shipped kernel's output (by rounding), which an override that never reached the
    kernel would not. (Warps, stages and precision do nothing under the interpreter.)"""
    pytest.importorskip("triton")
    rows = tune_triton.main(["--smoke"])
    assert "RED GATE" not in capsys.readouterr().out
    assert not [r for r in rows if "error" in r or "red_gate" in r]
    groups = {(r["op"], r["direction"], r["label"]) for r in rows}
    # exchange both ways at two shapes (4); MANI both ways on the tile and rows paths (4), and the
    # large path forward (its backward is autograd through the reference)
    assert len(groups) == 9
    names = {(r["op"], r["label"], r["variant"]): r for r in rows if r["direction"] == "forward"}
    backward = {(r["op"], r["label"], r["variant"]): r for r in rows if r["direction"] == "backward"}
    # The whole W band and spectrum are other arithmetic both ways.
    for key in [
        ("exchange_update", "cifar-B512", "whole W band"),
        ("exchange_update", "imagenet-B64", "whole W band"),
        ("mani_noise", "cifar-B512", "whole W spectrum"),
    ]:
        assert 0 < backward[key]["max_diff_vs_shipped"] <= tune_triton.RED_GATE, key
    for key in [
        ("exchange_update", "cifar-B512", "BLOCK_M=32"),
        ("exchange_update", "cifar-B512", "BLOCK_K=16"),
        ("exchange_update", "imagenet-B64", "BLOCK_K=64"),
        ("exchange_update", "cifar-B512", "whole W band"),
        ("exchange_update", "imagenet-B64", "whole W band"),
        ("mani_noise", "cifar-B512", "streamed kernel"),
        ("mani_noise", "cifar-B512", "whole W spectrum"),
        ("mani_noise", "imagenet-B64", "BLOCK=1024,num_warps=4"),
    ]:
        assert 0 < names[key]["max_diff_vs_shipped"] <= tune_triton.RED_GATE, key


SESSION_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_session.sh"
# A Python entry point the session script runs, and the rest of its command line up to the pipe.
_SESSION_COMMAND = re.compile(r'"\$PY" (bench/\w+\.py|-m manipure_fast\.cli)(.*)')


def _session_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of every Python entry point in bench/gpu_session.sh; shell values
    become plausible words (a file, the attack)."""
    text = SESSION_SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for match in _SESSION_COMMAND.finditer(text):
        target, rest = match[1], match[2].split(" 2>&1")[0].removesuffix(";;")
        module = "manipure_fast.cli" if target.startswith("-m") else target.replace("/", ".")[: -len(".py")]
        words = [
            "pgd" if w == "$attack" else "x.json" if w.startswith("$(") else w for w in shlex.split(rest)
        ]
        commands.append((module, words))
    return commands


class _Parsed(Exception):
    pass


def test_the_device_session_script_parses_and_its_command_lines_are_accepted(monkeypatch):
    """Device time is short: a mistyped flag in bench/gpu_session.sh would cost a session its
    stage. Each Python command line it runs goes through its script's own argument parser here
    (stopped right after parsing), and the shell script passes bash -n."""
    if shutil.which("bash") is not None:
        subprocess.run(["bash", "-n", str(SESSION_SCRIPT)], check=True)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands = _session_commands()
    assert {module for module, _ in commands} >= {
        "bench.bench_ops", "bench.bench_purifier", "bench.sanitize_ops", "bench.tune_cuda",
        "bench.tune_triton", "bench.dispatch_table", "bench.plot_throughput", "manipure_fast.cli",
    }  # fmt: skip
    for module, words in commands:
        with pytest.raises(_Parsed):
            importlib.import_module(module).main(words)
