"""Noise statistics and determinism."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearEps

from manipure_fast import GeneratorNoise, Purifier, PurifierConfig, RecordedNoise, Round
from manipure_fast.reference import intensity_map, mani_noise, noise_coefficients, uniform_noise


def _effective_noise(x, x_t, t):
    coef = noise_coefficients(t)
    return (x_t - x * coef.signal) / coef.noise


def test_uniform_noise_is_standard_normal():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=gen) * 2 - 1
    z = GeneratorNoise(gen).draw("round_renoise", x)
    e = _effective_noise(x, uniform_noise(x, 300, z), 300)
    assert abs(e.mean()) < 0.01 and abs(e.std() - 1) < 0.01


def test_mani_noise_has_unit_rms_per_plane_and_follows_the_map():
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 36, 36, generator=gen) * 2 - 1, 5, 1)
    W = intensity_map(x)
    assert torch.allclose(W.square().mean(dim=(-2, -1)), torch.ones(4, 3), atol=1e-5)
    # Average the effective noise energy over many draws: it follows W^2 and has unit mean.
    energy = torch.zeros_like(x)
    draws = 200
    for _ in range(draws):
        z = torch.randn(x.shape, generator=gen)
        energy += _effective_noise(x, mani_noise(x, 500, z), 500).square()
    energy /= draws
    assert torch.allclose(energy.mean(dim=(-2, -1)), torch.ones(4, 3), atol=0.05)
    corr = torch.corrcoef(torch.stack([energy.flatten(), W.square().flatten()]))[0, 1]
    assert corr > 0.9


def test_generator_noise_planes_are_independent():
    x = torch.zeros(8, 3, 16, 16)
    z = GeneratorNoise(torch.Generator().manual_seed(2)).draw("round_renoise", x)
    flat = z.flatten(2).flatten(0, 1)  # [24 planes, 256]
    corr = torch.corrcoef(flat)
    off_diagonal = corr - torch.eye(24)
    assert off_diagonal.abs().max() < 0.3


def _purifier():
    torch.manual_seed(0)
    return Purifier(LinearEps(3), PurifierConfig(rounds=(Round.from_total(40, 2),)))


def test_same_seed_bitwise_equal_and_different_seeds_differ():
    purifier = _purifier()
    x = torch.rand(2, 3, 12, 12)
    a = purifier.purify(x, generator=torch.Generator().manual_seed(7))
    b = purifier.purify(x, generator=torch.Generator().manual_seed(7))
    c = purifier.purify(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_follows_manual_seed():
    purifier = _purifier()
    x = torch.rand(2, 3, 12, 12)
    torch.manual_seed(3)
    a = purifier.purify(x)
    torch.manual_seed(3)
    assert torch.equal(a, purifier.purify(x))


def test_per_sample_generators_make_results_batch_independent():
    purifier = _purifier()
    x = torch.rand(3, 3, 12, 12)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    together = purifier.purify(x, generator=gens([10, 11, 12]))
    alone = purifier.purify(x[1:2], generator=gens([11]))
    # The model is per-sample, so only float reassociation in batched convs can differ.
    assert torch.allclose(together[1:2], alone, atol=1e-6)
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 2"):
        purifier.purify(x[:2], generator=gens([1, 2, 3]))


def test_recorded_noise_checks_order_and_exhaustion():
    purifier = Purifier(LinearEps(1), PurifierConfig(rounds=(Round(9, (9,)),)))
    x = torch.rand(1, 1, 8, 8)
    z = [torch.randn(1, 1, 8, 8) for _ in range(3)]
    with pytest.raises(
        ValueError, match="labelled 'ddpm_update_noise' but the sampler asked for 'round_renoise'"
    ):
        purifier.purify(x, noise=RecordedNoise(z, ["ddpm_update_noise"] * 3))
    with pytest.raises(ValueError, match="exhausted after 2 draws"):
        purifier.purify(x, noise=RecordedNoise(z[:2]))
    noise = RecordedNoise(z, ["round_renoise", "reference_renoise", "ddpm_update_noise"])
    purifier.purify(x, noise=noise)
    assert noise.remaining == 0


def test_ddim_still_consumes_update_noise_but_ignores_it():
    purifier = Purifier(LinearEps(1), PurifierConfig(rounds=(Round(19, (9, 19)),), sampling="ddim"))
    x = torch.rand(1, 1, 8, 8)
    base = [torch.randn(1, 1, 8, 8) for _ in range(5)]
    changed = list(base)
    changed[2] = torch.randn(1, 1, 8, 8) * 100  # the first update noise
    a = purifier.purify(x, noise=RecordedNoise(base))
    b = purifier.purify(x, noise=RecordedNoise(changed))
    assert torch.equal(a, b)
