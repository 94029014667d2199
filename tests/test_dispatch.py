"""The auto-dispatch table: parsing, the nearest measured shape, the order "auto" tries, and the
bench script that writes the table from measured rows (synthetic rows here; the committed table
comes from GPU measurements only)."""

from __future__ import annotations

import json

import pytest

from bench.dispatch_table import build_table
from bench.dispatch_table import main as write_table
from manipure_fast.ops import dispatch, registry


def _entry(op, side, planes, order):
    return dict(op=op, height=side, width=side, planes=planes, order=order)


TABLE = dispatch.parse_table(
    {
        "entries": [
            _entry("exchange_update", 32, 3, ["triton", "cuda"]),
            _entry("exchange_update", 32, 1536, ["cuda", "triton", "reference"]),
            _entry("exchange_update", 256, 192, ["triton", "reference", "cuda"]),
        ]
    }
)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 3, 32, 32), ("triton", "cuda")),
        ((512, 3, 32, 32), ("cuda", "triton", "reference")),
        ((200, 3, 28, 28), ("cuda", "triton", "reference")),  # nearest plane size, then plane count
        ((1, 3, 200, 224), ("triton", "reference", "cuda")),
    ],
    ids=["B1-32", "B512-32", "B200-28", "B1-200x224"],
)
def test_nearest_measured_shape_decides(shape, expected):
    assert dispatch.measured_order("exchange_update", shape, TABLE) == expected


def test_an_op_without_entries_has_no_measured_order():
    assert dispatch.measured_order("mani_noise", (1, 3, 32, 32), TABLE) is None


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(op="exchange_update", height=32, width=32, order=["cuda"]), "malformed"),
        (_entry("exchange_update", 32, 3, ["cupy"]), "unknown backends"),
        (_entry("exchange_update", 0, 3, ["cuda"]), "bad sizes"),
        (_entry("exchange_update", 32, 3, []), "unknown backends"),
    ],
    ids=["no-planes", "unknown-backend", "zero-side", "empty-order"],
)
def test_malformed_tables_are_refused_by_name(entry, message):
    with pytest.raises(ValueError, match=message):
        dispatch.parse_table({"entries": [entry]})


def test_auto_order_puts_the_measured_order_first_on_gpus_only(monkeypatch):
    monkeypatch.setattr(
        registry, "measured_order", lambda op, shape: dispatch.measured_order(op, shape, TABLE)
    )
    on_gpu = registry.auto_order("exchange_update", (512, 3, 32, 32), on_gpu=True)
    assert on_gpu == ("cuda", "triton", "reference")
    assert registry.auto_order("exchange_update", (512, 3, 32, 32), on_gpu=False) == registry.AUTO_ORDER
    assert registry.auto_order("mani_noise", (512, 3, 32, 32), on_gpu=True) == registry.AUTO_ORDER


def test_no_table_is_committed_without_measurements():
    # The table is written only from GPU rows; until one exists "auto" uses AUTO_ORDER everywhere.
    if dispatch.TABLE_PATH.exists():
        provenance = json.loads(dispatch.TABLE_PATH.read_text())["provenance"]
        assert provenance["gpu"] and provenance["commit"] not in (None, "unknown")
        assert dispatch.load_table()
    else:
        assert dispatch.load_table() == ()


def _row(op, provider, shape, p50, gpu="NVIDIA H100 80GB HBM3"):
    return dict(op=op, provider=provider, shape=shape, p50_ms=p50, gpu=gpu, commit="abc", date="2026-11-25")


def test_bench_script_ranks_gated_providers_and_round_trips(tmp_path):
    rows = [
        _row("exchange_update", "reference-structure", [512, 3, 32, 32], 90.0),
        _row("exchange_update", "torch-eager", [512, 3, 32, 32], 3.0),
        _row("exchange_update", "triton", [512, 3, 32, 32], 0.2),
        _row("exchange_update", "cuda", [512, 3, 32, 32], 0.1),
        _row("mani_noise", "torch-eager", [64, 3, 256, 256], 5.0),
        # bench_ops.py --backward rows time the gradients too: dispatch ranks forwards only
        {**_row("exchange_update", "triton", [512, 3, 32, 32], 0.05), "direction": "forward+backward"},
        {**_row("mani_noise", "cuda", [64, 3, 256, 256], 0.1), "direction": "forward+backward"},
    ]
    results = tmp_path / "ops.json"
    results.write_text(json.dumps(rows))
    out = tmp_path / "table.json"
    write_table([str(results), "-o", str(out)])
    table = json.loads(out.read_text())
    assert table["provenance"]["gpu"] == "NVIDIA H100 80GB HBM3"
    entries = dispatch.parse_table(table)
    assert entries[0].order == ("cuda", "triton", "reference") and entries[0].planes == 1536
    assert entries[1] == dispatch.MeasuredShape("mani_noise", 256, 256, 192, ("reference",))


def test_bench_script_refuses_rows_from_mixed_gpus():
    rows = [
        _row("mani_noise", "triton", [1, 3, 32, 32], 0.1),
        _row("mani_noise", "cuda", [1, 3, 32, 32], 0.1, "A100"),
    ]
    with pytest.raises(ValueError, match="one GPU"):
        build_table(rows)
