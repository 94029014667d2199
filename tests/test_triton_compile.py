"""The Triton kernels compile for sm_90 (H100/H200) on this CPU machine, with the constexprs the
ops pass at ImageNet's 256x256, and fit the shared memory a block may have there. Triton's own
ptxas does the compiling, so no GPU is needed; ``bench/compile_sm90.py`` records the launch
arguments from the real launchers. The run must be free of TRITON_INTERPRET, so it is a child
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SM90_MAX_SHARED_PER_BLOCK = 232448  # 227 KB, the opt-in maximum of an H100/H200 block


def _compile(tmp_path, cases: str, ptxas_report: bool, selection: tuple[str, ...] = ()) -> list[dict]:
    """Rows of ``bench/compile_sm90.py`` for the comma-separated ``cases`` (or the given
    ``selection`` of its arguments), compiled afresh."""
    from triton.backends.nvidia.compiler import get_ptxas

    if not Path(get_ptxas(90).path).is_file():
        pytest.skip("triton ships no ptxas here")
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from a cache
    flags = [] if ptxas_report else ["--no-ptxas-report"]
    selection = selection or ("--cases", cases)
    done = subprocess.run(
        [sys.executable, "bench/compile_sm90.py", *selection, *flags, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert all(r["arch"] == "sm_90a" for r in rows)
    return rows


# The exchange kernels at 256x256 spilled 4.5 KB (forward) and 16 KB (backward) per thread while
# their row transforms were K = 256 dots; in 32-column chunks they spill 0 and 20 bytes.
EXCHANGE_SPILL_LIMIT = 256


def test_imagenet_kernels_compile_for_sm90_within_its_shared_memory(tmp_path):
    rows = _compile(
        tmp_path,
        "exchange imagenet,exchange backward imagenet,mani imagenet philox none,mani backward imagenet",
        ptxas_report=True,
    )
    kernels = {r["kernel"] for r in rows}
    assert kernels == {
        "exchange_update_kernel",
        "exchange_update_backward_kernel",
        "mani_band_weights_kernel",
        "mani_inject_kernel",
        "mani_map_gradient_kernel",
        "mani_spectrum_gradient_kernel",
    }
    for r in rows:
        assert r["shared_bytes"] <= SM90_MAX_SHARED_PER_BLOCK, r
        if r["kernel"].startswith("exchange"):
            assert r["spill_stores"] <= EXCHANGE_SPILL_LIMIT, r


def test_cifar_exchange_kernels_compile_for_sm90_with_few_spills(tmp_path):
    # 32-row blocks spilled 0.1-0.5 KB per thread in four of these five; 16-row blocks spill none.
    cases = "exchange cifar,exchange cifar philox project real,exchange 31x33 no-eps-ref," + (
        "exchange backward cifar,exchange backward cifar project real"
    )
    rows = _compile(tmp_path, cases, ptxas_report=True)
    assert len(rows) == 5
    for r in rows:
        assert r["spill_stores"] <= EXCHANGE_SPILL_LIMIT, r


# The whole-tile MANI kernel at 64x64 spilled 93 KB per thread and took ptxas ten minutes. The
# streamed kernels that replaced it there spill about 1 KB (forward) and 5 KB (backward; 24 KB
# when its last pass held two spectrum blocks at once). bench/results/compile-sm90-*.json.
ROWS_SPILL_LIMIT = {"mani_noise_rows_kernel": 4096, "mani_noise_rows_backward_kernel": 8192}


def test_mani_64x64_is_one_streamed_kernel_each_way_with_few_spills(tmp_path):
    rows = _compile(tmp_path, "mani 64x64,mani backward 64x64", ptxas_report=True)
    assert [r["kernel"] for r in rows] == list(ROWS_SPILL_LIMIT)
    for row in rows:
        assert row["shared_bytes"] <= SM90_MAX_SHARED_PER_BLOCK
        assert row["spill_stores"] <= ROWS_SPILL_LIMIT[row["kernel"]], row


def test_what_a_test_launches_is_recorded_and_compiled(tmp_path):
    """``--from-tests`` runs tests under the interpreter, records each kernel specialisation they
    launch, and compiles each one for sm_90. The whole GPU test set, 138 specialisations, is in
    bench/results/compile-sm90-2026-12-03-test-launches.json; this checks the tool on one test."""
    node = "tests/test_triton_ops.py::test_exchange_update_last_step_returns_exchanged_x0"
    rows = _compile(tmp_path, "", ptxas_report=False, selection=("--from-tests", node))
    assert [r["kernel"] for r in rows] == ["exchange_update_kernel"]
    assert (rows[0]["constexprs"]["H"], rows[0]["constexprs"]["W"]) == (16, 16)
    assert rows[0]["case"] == "tests 16x16, 1 launches"
