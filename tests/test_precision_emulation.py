"""bench/precision_emulation.py: the tensor-core dot emulation itself, and that it reaches every
kernel's dots (a "tf32" run must be visibly worse than "ieee", or the override did nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_fixture

pytest.importorskip("triton")

from bench import precision_emulation as emulation  # noqa: E402


def _bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_tf32_round_is_nearest_ties_away_from_zero():
    ulp = 2.0**-10  # TF32's at 1.0
    values = np.array(
        [1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2**-23, 1 + 3 * ulp / 2, 3.0, np.inf, -np.inf],
        dtype=np.float32,
    )
    expected = np.array([1 + ulp, -(1 + ulp), 1.0, 1 + 2 * ulp, 3.0, np.inf, -np.inf], dtype=np.float32)
    np.testing.assert_array_equal(emulation.tf32_round(values), expected)
    assert np.isnan(emulation.tf32_round(np.array([np.nan], dtype=np.float32))).all()
    random = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert not (_bits(emulation.tf32_round(random)) & 0x1FFF).any()
    assert np.abs(emulation.tf32_round(random) - random).max() <= np.abs(random).max() * 2.0**-11


def test_tf32_truncate_drops_the_low_mantissa_bits():
    values = np.array([1 + 2.0**-10 - 2.0**-23, -(1 + 2.0**-10 - 2.0**-23)], dtype=np.float32)
    np.testing.assert_array_equal(emulation.tf32_truncate(values), np.array([1.0, -1.0], dtype=np.float32))


def test_tf32x3_recovers_fp32_products_where_tf32_loses_three_digits():
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    fp32 = np.abs(np.matmul(a, b, dtype=np.float32) - exact).max()
    tf32x3 = np.abs(emulation.tf32x3_dot(a, b) - exact).max()
    tf32 = np.abs(emulation.tf32_dot(a, b) - exact).max()
    assert tf32x3 <= 4 * fp32, (tf32x3, fp32)
    assert tf32 >= 100 * fp32, (tf32, fp32)


def test_ieee_under_the_override_is_the_shipped_kernel_bit_for_bit():
    case = emulation.exchange_case("cifar", (1, 2, 16, 16), "forward")
    shipped = case.run("triton", torch.float32)[0]
    with emulation.dot_precision("ieee"):
        overridden = case.run("triton", torch.float32)[0]
    assert torch.equal(shipped, overridden)


def test_smoke_rows_rank_the_precisions():
    """Every op and direction: tf32 misses T7 by orders of magnitude (so the emulation reached its
    dots); ieee and tf32x3 stay on the fp32 reference's own error scale."""
    rows = emulation.main(["--smoke"])
    by_case = {}
    for row in rows:
        by_case.setdefault((row["op"], row["direction"], row["label"]), {})[row["precision"]] = row
    assert len(by_case) == len(emulation.cases(smoke=True))
    for case, found in by_case.items():
        assert set(found) == set(emulation.PRECISIONS), case
        fp32_scale = 2 * found["ieee"]["eager_fp32_max_error"] + 1e-6
        assert found["ieee"]["max_error"] <= fp32_scale, case
        assert found["tf32x3"]["max_error"] <= fp32_scale, case
        assert found["tf32"]["max_error"] >= 100 * fp32_scale, case


def test_tf32x3_purifications_meet_t7_on_the_golden_fixtures():
    """T7 with the dots emulated as tf32x3: the reference purifier's recorded purifications
    (SPEC §4), through the drop-in constructor on the triton backend, within 1e-5."""
    load_fixture("reverse_step_parity.pt")  # skips, with the reason, where the fixtures are absent
    rows = emulation.fixture_rows(FIXTURES, precisions=("tf32x3",))
    assert len(rows) == 6
    assert all(row["within_t7"] for row in rows), [(r["label"], r["max_error"]) for r in rows]
