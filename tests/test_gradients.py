"""Gradients flow through the whole purifier (adaptive attacks depend on it)."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearEps

from manipure_fast import DefendedClassifier, GeneratorNoise, Purifier, PurifierConfig, RecordedNoise, Round
from manipure_fast.reference import denoise_round, exchange, intensity_map, mani_noise
from manipure_fast.reference.sampler import purify_round
from manipure_fast.reference.schedule import noise_coefficients


def _smooth(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) * 1.4 - 0.7


def test_gradcheck_intensity_map_and_mani():
    x = _smooth(1, 2, 6, 5, seed=0).requires_grad_()
    z = torch.randn(1, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda v: intensity_map(v, n_bands=3), (x,))
    assert torch.autograd.gradcheck(lambda v: mani_noise(v, 100, z, n_bands=3), (x,))
    assert torch.autograd.gradcheck(
        lambda v: intensity_map(v, weight_map="kernel", normalize="max", n_bands=3), (x,)
    )


def test_gradcheck_exchange_both_phase_modes():
    x_ref = _smooth(1, 2, 6, 7, seed=2).requires_grad_()
    x0 = _smooth(1, 2, 6, 7, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: exchange(a, b, amplitude_cut_range=2, phase_cut_range=1), (x_ref, x0)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: exchange(
            a, b, amplitude_cut_range=1, phase_cut_range=2, phase_mode="project", reconstruct="real"
        ),
        (x_ref, x0),
    )


def test_gradcheck_one_whole_round():
    model = LinearEps(channels=1).double()
    for p in model.parameters():
        p.requires_grad_(False)
    x = _smooth(1, 1, 6, 6, seed=4).requires_grad_()
    gen = torch.Generator().manual_seed(5)
    noise = [torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=gen) for _ in range(5)]
    config = PurifierConfig(
        rounds=(Round(30, (14, 29)),), n_bands=3, amplitude_cut_range=1, phase_cut_range=1
    )

    def run(v):
        return purify_round(model, v, config.rounds[0], config, RecordedNoise(noise))

    assert torch.autograd.gradcheck(run, (x,), atol=1e-5)


def test_gradients_reach_the_input_through_purifier_and_defended_classifier():
    torch.manual_seed(0)
    model = LinearEps(channels=3)
    config = PurifierConfig(rounds=(Round.from_total(50, 2),))
    purifier = Purifier(model, config)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    purifier.purify(x, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()

    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    defended = DefendedClassifier(purifier, classifier, num_ensemble_runs=2)
    x.grad = None
    torch.nn.functional.cross_entropy(defended(x), torch.tensor([1, 2])).backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_mani_gradient_is_not_detached_unless_asked():
    x = _smooth(1, 1, 8, 8, seed=6).requires_grad_()
    z = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    # With z = 1 the noise term is W itself; its gradient must reach x.
    (g,) = torch.autograd.grad(mani_noise(x, 999, z).sum(), x)
    (g_detached,) = torch.autograd.grad(mani_noise(x, 999, z, detach_map=True).sum(), x)
    from manipure_fast.reference import noise_coefficients

    assert torch.allclose(g_detached, torch.full_like(x, noise_coefficients(999).signal))
    assert not torch.allclose(g, g_detached)


def test_denoise_round_gradient_wrt_round_input():
    model = LinearEps(channels=1)
    x_in = torch.rand(1, 1, 8, 8, requires_grad=True)
    x_t = torch.randn(1, 1, 8, 8)
    out = denoise_round(
        model, x_in, x_t, (9, 19), PurifierConfig(), GeneratorNoise(torch.Generator().manual_seed(0))
    )
    (g,) = torch.autograd.grad(out.sum(), x_in)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("normalize", ["rms", "max"])
def test_mani_gradient_of_a_constant_plane_is_the_direct_term(normalize):
    """A mid-grey plane has no spectrum to shape W by (W = 1 there): the gradient is sqrt(abar),
    finite. (sqrt(0)' once made the rms path's gradient NaN.)"""
    x = torch.zeros(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    z = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    (grad,) = torch.autograd.grad(mani_noise(x, 300, z, normalize=normalize).sum(), x)
    assert torch.equal(grad, torch.full_like(x, noise_coefficients(300).signal))
