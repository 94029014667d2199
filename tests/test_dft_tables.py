"""The half W band's host tables (manipure_fast/ops/dft_tables.py): which frequencies it holds,
when it cannot stand for the whole band, and that its weights make the real part of the half-band
inverse equal the whole band's inverse of a Hermitian spectrum."""

from __future__ import annotations

import math

import pytest
import torch

from manipure_fast.ops.dft_tables import band_frequencies, band_tables, half_band_weights, nyquist_in_band

AXES = [(n, cut) for n in (1, 2, 7, 15, 16, 20, 21, 32, 33, 256) for cut in (0.5, 3, 7.9, 10, 30)]


@pytest.mark.parametrize("n, cut", AXES)
def test_nyquist_in_band_is_whether_the_band_holds_n_over_2(n, cut):
    freqs = band_frequencies(n, cut)
    holds_nyquist = n % 2 == 0 and bool((torch.remainder(2 * freqs, n) == 0).logical_and(freqs != 0).any())
    assert nyquist_in_band(n, cut) == holds_nyquist


@pytest.mark.parametrize("n, cut", [a for a in AXES if not nyquist_in_band(*a)])
def test_half_band_with_its_weights_inverts_a_hermitian_band(n, cut):
    """Re(sum over f >= 0 of weight_f X_f e^{i theta_f k}) equals the whole band's sum for a
    Hermitian X (X_{-f} = conj X_f), in fp64; the half band is the whole band's non-negative part."""
    whole, half = band_frequencies(n, cut), band_frequencies(n, cut, half=True)
    assert sorted(half.tolist()) == sorted(f for f in whole.tolist() if f >= 0)
    gen = torch.Generator().manual_seed(n * 100 + int(cut * 10))
    spectrum = {
        f: complex(*torch.randn(2, generator=gen, dtype=torch.float64).tolist()) for f in half.tolist()
    }
    spectrum[0] = complex(spectrum[0].real, 0.0)
    k = torch.arange(n, dtype=torch.float64)

    def inverse(freqs, values):
        return sum(v * torch.exp(1j * 2 * math.pi * f * k / n) for f, v in zip(freqs, values))

    full = inverse(
        whole.tolist(), [spectrum[f] if f >= 0 else spectrum[-f].conjugate() for f in whole.tolist()]
    )
    weights = half_band_weights(n, cut, 16 * (1 + half.numel() // 16), torch.device("cpu")).double()
    assert weights[half.numel() :].eq(0).all()
    halved = inverse(half.tolist(), [w * spectrum[f] for f, w in zip(half.tolist(), weights.tolist())])
    torch.testing.assert_close(halved.real, full.real, rtol=0, atol=1e-12)
    assert full.imag.abs().max() < 1e-12  # the whole band's inverse of a Hermitian X is real


@pytest.mark.parametrize("n, cut", [(32, 10), (31, 5), (15, 30), (256, 10)])
def test_half_band_tables_are_the_whole_tables_non_negative_rows(n, cut):
    whole, half = band_frequencies(n, cut), band_frequencies(n, cut, half=True)
    cos, sin = band_tables(n, cut, 32, n, torch.device("cpu"))
    cos_half, sin_half = band_tables(n, cut, 16, n, torch.device("cpu"), True)
    rows = [whole.tolist().index(f) for f in half.tolist()]
    assert torch.equal(cos_half[: half.numel()], cos[rows]) and torch.equal(
        sin_half[: half.numel()], sin[rows]
    )
    assert cos_half[half.numel() :].eq(0).all() and sin_half[half.numel() :].eq(0).all()
