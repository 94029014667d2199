"""Small hand-checkable tests of each formula in SPEC §1-§2.3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manipure_fast import PurifierConfig, Round, parse_schedule
from manipure_fast.reference import (
    band_map,
    band_mean_magnitudes,
    band_weights,
    exchange,
    intensity_map,
    radius,
    signed_frequencies,
    step_coefficients,
)
from manipure_fast.reference.grid import disc_mask
from manipure_fast.reference.schedule import abar, round_step_coefficients

CPU = torch.device("cpu")


def test_signed_frequencies_even_and_odd():
    assert signed_frequencies(4).tolist() == [0, 1, -2, -1]
    assert signed_frequencies(5).tolist() == [0, 1, 2, -2, -1]
    assert signed_frequencies(1).tolist() == [0]


def test_radius_is_exact_on_non_power_of_two():
    r = radius(24, 40)
    # fftfreq(40)*40 gives 6.000000000000001 at this bin; the integer grid gives exactly 6.
    assert r[0, 6].item() == 6.0 and r[6, 0].item() == 6.0
    assert r[3, 4].item() == 5.0  # Pythagorean triple on the boundary of a radius-5 disc
    assert disc_mask(24, 40, 5, CPU)[3, 4] and not disc_mask(24, 40, 5, CPU)[3, 5]


def test_band_map_width_by_hand():
    # 4x4: radii of (u, v) in {0,1,-2,-1}^2; r_max = sqrt(8); n = 2 -> band 1 iff r >= sqrt(2).
    bands = band_map(4, 4, 2, "width", CPU)
    r = radius(4, 4)
    assert torch.equal(bands, (r >= math.sqrt(8) / 2).long())
    assert bands[0, 0] == 0 and bands[2, 2] == 1


def test_band_map_width_top_band_clipped():
    bands = band_map(32, 32, 8, "width", CPU)
    assert bands.max() == 7 and bands[16, 16] == 7  # r = r_max lands in band n-1, not n
    assert bands[0, 0] == 0


def test_band_map_count_is_balanced_and_keeps_ties_together():
    bands = band_map(32, 32, 8, "count", CPU)
    counts = torch.bincount(bands.flatten(), minlength=8)
    assert counts.sum() == 1024 and counts.min() > 0.7 * 128 and counts.max() < 1.3 * 128
    r = radius(32, 32)
    for value in r.unique()[:50]:
        assert bands[r == value].unique().numel() == 1


def test_band_means_and_weights_by_hand():
    # A constant plane c on 4x4 has a single nonzero coefficient F[0,0] = 16c.
    x = torch.full((1, 1, 4, 4), 0.5)
    means = band_mean_magnitudes(x, n_bands=2)
    n_band0 = int((band_map(4, 4, 2, "width", CPU) == 0).sum())
    assert torch.allclose(means, torch.tensor([[[8.0 / n_band0, 0.0]]]))
    w = band_weights(means, gamma=1.8, eps0=1e-6)
    assert torch.allclose(w, 1 / (means**1.8 + 1e-6))
    assert w[0, 0, 1] == pytest.approx(1e6)  # empty magnitude -> 1/eps0


def test_lower_magnitude_bands_get_larger_weights():
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 36, 36) * 2 - 1, 5, 1)  # smooth: 1/f-like
    means = band_mean_magnitudes(x)
    w = band_weights(means)
    order_m = means.argsort(dim=-1)
    order_w = w.argsort(dim=-1, descending=True)
    assert torch.equal(order_m, order_w)


@pytest.mark.parametrize("normalize", ["rms", "max", "none"])
@pytest.mark.parametrize("weight_map", ["spectral", "kernel"])
def test_intensity_map_normalisation(normalize, weight_map):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 12, 10) * 2 - 1
    W = intensity_map(x, weight_map=weight_map, normalize=normalize)
    assert W.shape == x.shape and (W >= 0).all()
    if normalize == "rms":
        assert torch.allclose(W.square().mean(dim=(-2, -1)), torch.ones(2, 3), atol=1e-5)
    elif normalize == "max":
        assert torch.allclose(W.amax(dim=(-2, -1)), torch.ones(2, 3))


def test_intensity_map_spectral_by_definition():
    torch.manual_seed(2)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 2 - 1
    F = torch.fft.fft2(x)
    bands = band_map(8, 8, 8, "width", CPU)
    M = torch.stack(
        [
            F.abs()[0, 0][bands == i].mean() if (bands == i).any() else torch.tensor(0.0, dtype=torch.float64)
            for i in range(8)
        ]
    )
    w = 1 / (M**1.8 + 1e-6)
    W = torch.fft.ifft2(w[bands] * F[0, 0]).abs()
    W = W / W.square().mean().sqrt()
    assert torch.allclose(intensity_map(x)[0, 0], W, atol=1e-10)


def test_intensity_map_zero_plane_falls_back_to_uniform():
    x = torch.zeros(1, 2, 8, 8)
    x[0, 1] = torch.rand(8, 8)
    W = intensity_map(x)
    assert torch.equal(W[0, 0], torch.ones(8, 8))
    assert torch.isfinite(W).all()


def test_round_sequences():
    assert Round.from_total(1000, 100).timesteps == tuple(range(9, 1000, 10))
    assert Round.from_total(1000, 100).renoise_t == 999
    assert Round.from_total(50, 5) == Round(49, (9, 19, 29, 39, 49))
    assert Round.from_total(20, 5) == Round(19, (3, 7, 11, 15, 19))
    assert Round.from_total(1000, 3) == Round(999, (332, 665, 998))
    assert parse_schedule("20,50", "5,5") == (Round(19, (3, 7, 11, 15, 19)), Round(49, (9, 19, 29, 39, 49)))


def test_presets():
    assert PurifierConfig.preset("cifar10").rounds == (Round.from_total(1000, 100),)
    v2 = PurifierConfig.preset("cifar10_v2")
    assert v2.rounds == (Round.from_total(20, 5),) * 5 + (Round.from_total(50, 5),) * 5
    assert (v2.amplitude_cut_range, v2.phase_cut_range) == (3, 3)
    imagenet = PurifierConfig.preset("imagenet")
    assert imagenet.rounds == (Round.from_total(50, 5),) * 8 and imagenet.model_resolution == (256, 256)
    assert PurifierConfig.preset("attack_surrogate").rounds == (Round(999, (999,)),)
    with pytest.raises(ValueError, match="unknown preset"):
        PurifierConfig.preset("mnist")


def test_step_coefficients():
    c = step_coefficients(49, 39, eta=1.0)
    a, an = abar(49).item(), abar(39).item()
    assert c.c1 == pytest.approx(math.sqrt((1 - a / an) * (1 - an) / (1 - a)), rel=1e-6)
    assert c.c2 == pytest.approx(math.sqrt(1 - an - c.c1**2), rel=1e-5)
    last = step_coefficients(9, -1, eta=1.0)
    assert (last.sqrt_abar_next, last.c1, last.c2) == (1.0, 0.0, 0.0)  # output = exchanged x0
    assert step_coefficients(49, 39, eta=0.0).c1 == 0.0
    steps = round_step_coefficients((9, 19, 29), 1.0)
    assert [(s.t, s.t_next) for s in steps] == [(29, 19), (19, 9), (9, -1)]


def test_equal_cuts_reduce_to_spectrum_selection():
    """SPEC §2.2 identity: with equal radii, replace mode is where(r <= R, F_ref, F_x0)."""
    torch.manual_seed(3)
    x_ref, x0 = torch.rand(2, 2, 3, 16, 20, dtype=torch.float64) * 1.6 - 0.8
    out = exchange(x_ref, x0, amplitude_cut_range=4, phase_cut_range=4, reconstruct="real")
    to_px = lambda v: (v / 2 + 0.5) * 255
    mixed = torch.where(disc_mask(16, 20, 4, CPU), torch.fft.fft2(to_px(x_ref)), torch.fft.fft2(to_px(x0)))
    expected = torch.clamp((torch.fft.ifft2(mixed).real.clip(0, 255) / 255 - 0.5) * 2, -1, 1)
    assert torch.allclose(out, expected, atol=1e-10)


def test_project_mode_clips_phase_difference_with_wraparound():
    torch.manual_seed(4)
    x_ref, x0 = torch.rand(2, 1, 1, 8, 8, dtype=torch.float64) * 1.6 - 0.8
    delta = 0.3
    out = exchange(
        x_ref,
        x0,
        amplitude_cut_range=0,
        phase_cut_range=100,
        phase_mode="project",
        delta=delta,
        reconstruct="real",
    )
    # Rebuild the spectrum of the output and check the phase difference is within delta mod 2pi.
    to_px = lambda v: (v / 2 + 0.5) * 255
    f_ref, f_x0 = torch.fft.fft2(to_px(x_ref)), torch.fft.fft2(to_px(x0))
    diff = torch.remainder(f_x0.angle() - f_ref.angle() + math.pi, 2 * math.pi) - math.pi
    expected_phase = f_ref.angle() + diff.clamp(-delta, delta)
    # amplitude_cut_range=0 still takes DC (r = 0 <= 0) from the reference.
    amplitude = torch.where(disc_mask(8, 8, 0, CPU), f_ref.abs(), f_x0.abs())
    spectrum = torch.polar(amplitude, expected_phase)
    expected = torch.clamp((torch.fft.ifft2(spectrum).real.clip(0, 255) / 255 - 0.5) * 2, -1, 1)
    assert torch.allclose(out, expected, atol=1e-10)
    # A phase difference just across the +-pi cut is small, not ~2pi: it stays (nearly) x0's.
    assert (diff.abs() <= math.pi + 1e-12).all()


def test_delta_has_no_effect_in_replace_mode():
    x_ref, x0 = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    assert torch.equal(exchange(x_ref, x0, delta=0.01), exchange(x_ref, x0, delta=2.0))


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="phase_mode"):
        PurifierConfig(phase_mode="clip")
    with pytest.raises(ValueError, match="n_bands"):
        PurifierConfig(n_bands=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        Round(10, (5, 3))
    with pytest.raises(ValueError, match="lie in"):
        Round(999, (999, 1000))
    with pytest.raises(ValueError, match="num_steps"):
        Round.from_total(10, 20)


@pytest.mark.parametrize(
    "renoise_t, timesteps, match",
    [
        (5.5, (1, 2), "renoise_t must be an int"),
        (True, (1, 2), "renoise_t must be an int"),
        (10, (1.5, 2), "timesteps must be an int"),  # was truncated to 1 silently
        (10, 5, "sequence of ints"),
    ],
)
def test_round_refuses_timesteps_that_are_not_ints(renoise_t, timesteps, match):
    with pytest.raises(TypeError, match=match):
        Round(renoise_t, timesteps)


def test_round_takes_numpy_integers_as_ints():
    r = Round(np.int64(10), (np.int32(3), 4))
    assert r == Round(10, (3, 4)) and type(r.renoise_t) is int and type(r.timesteps[0]) is int
