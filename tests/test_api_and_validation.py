"""The public API: bad input, dtypes, learned sigma, resizing, voting, the compat layer and the
reference-structure baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LinearEps, dummy_eps_model

from bench.baselines.reference_structure import ReferenceStructurePurifier
from manipure_fast import DefendedClassifier, Purifier, PurifierConfig, RecordedNoise, Round, ops
from manipure_fast.compat import PurificationForward, get_diffusion_params, imagenet_normalize
from manipure_fast.reference import purify_diffusion
from manipure_fast.reference.schedule import step_coefficients

SMALL = PurifierConfig(rounds=(Round.from_total(30, 2),))


@pytest.fixture
def purifier():
    torch.manual_seed(0)
    return Purifier(LinearEps(3), SMALL)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.full((1, 3, 8, 8), float("nan")), ValueError, "non-finite"),
        (torch.full((1, 3, 8, 8), float("inf")), ValueError, "non-finite"),
        (torch.full((1, 3, 8, 8), 1.5), ValueError, r"outside \[0, 1\]"),
        (torch.full((1, 3, 8, 8), -0.01), ValueError, r"outside \[0, 1\]"),
        (torch.rand(3, 8, 8), ValueError, "shape \\[B, C, H, W\\]"),
        (torch.rand(1, 1, 8, 8), ValueError, "1 channels but the diffusion model takes 3"),
        (torch.rand(0, 3, 8, 8), ValueError, "empty batch"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "floating tensor"),
        ([[0.5]], TypeError, "torch.Tensor"),
    ],
    ids=["nan", "inf", "above-1", "below-0", "rank-3", "channels", "empty", "uint8", "list"],
)
def test_bad_input_is_named(purifier, bad, error, match):
    with pytest.raises(error, match=match):
        purifier.purify(bad)


NAN, INF = float("nan"), float("inf")
# (option, value, error, message): the same options, refused the same way, by PurifierConfig and
# by the public ops on every backend.
MANI_BAD_OPTIONS = [
    ("gamma", NAN, ValueError, "gamma must be a number"),
    ("gamma", INF, ValueError, "gamma must be finite"),
    ("gamma", "1.8", TypeError, "gamma must be a real number"),
    ("eps0", 0.0, ValueError, "eps0 must be finite and > 0"),
    ("eps0", INF, ValueError, "eps0 must be finite and > 0"),
    ("n_bands", 0, ValueError, "n_bands must be >= 1"),
    ("n_bands", 2.5, TypeError, "n_bands must be an int"),
    ("n_bands", True, TypeError, "n_bands must be an int"),
    ("band_mode", "rings", ValueError, "band_mode must be one of"),
    ("weight_map", "map", ValueError, "weight_map must be one of"),
    ("normalize", "l2", ValueError, "normalize must be one of"),
]
EXCHANGE_BAD_OPTIONS = [
    ("amplitude_cut_range", NAN, ValueError, "amplitude_cut_range must be a number"),
    ("phase_cut_range", -1.0, ValueError, "phase_cut_range must be >= 0"),
    ("delta", NAN, ValueError, "delta must be a number"),
    ("delta", -0.1, ValueError, "delta must be >= 0"),
    ("phase_mode", "rotate", ValueError, "phase_mode must be one of"),
    ("reconstruct", "imag", ValueError, "reconstruct must be one of"),
    ("forward_noise_steps", 1000, ValueError, r"forward_noise_steps must lie in \[0, 1000\)"),
    ("forward_noise_steps", 50.0, TypeError, "forward_noise_steps must be an int"),
]


def _option_id(case):
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("case", MANI_BAD_OPTIONS + EXCHANGE_BAD_OPTIONS, ids=_option_id)
def test_bad_options_are_named_by_the_config(case):
    option, value, error, match = case
    with pytest.raises(error, match=match):
        PurifierConfig(**{option: value})


@pytest.mark.parametrize("backend", ops.BACKENDS)
@pytest.mark.parametrize(
    "case", MANI_BAD_OPTIONS + [("t", 2.5, TypeError, "t must be an int timestep")], ids=_option_id
)
def test_bad_mani_options_are_named_by_every_backend(case, backend):
    option, value, error, match = case
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    options = {"t": 300, option: value}
    with pytest.raises(error, match=match):
        ops.mani_noise(x, options.pop("t"), torch.randn_like(x), backend=backend, **options)


@pytest.mark.parametrize("backend", ops.BACKENDS)
@pytest.mark.parametrize("case", EXCHANGE_BAD_OPTIONS, ids=_option_id)
def test_bad_exchange_options_are_named_by_every_backend(case, backend):
    option, value, error, match = case
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    with pytest.raises(error, match=match):
        ops.exchange_update(
            x, x, x, x, x, step=step_coefficients(99, 89, eta=1.0), backend=backend, **{option: value}
        )


@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_exchange_step_must_be_step_coefficients(backend):
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(TypeError, match="step must be the StepCoefficients"):
        ops.exchange_update(x, x, x, x, x, step=(0.5, 0.5, 0.9), backend=backend)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("side", [16, 70], ids=["tile", "large"])
def test_numpy_scalars_are_taken_as_python_numbers(backend, side):
    """Options read from numpy (a sweep, a config file) give what Python numbers give; they
    reached Triton's table helpers as numpy integers, which have no bit_length."""
    x = torch.rand(1, 1, side, side) * 2 - 1
    z = torch.randn_like(x)
    as_numpy = ops.mani_noise(
        x, np.int64(300), z, n_bands=np.int64(8), gamma=np.float64(1.8), backend=backend
    )
    assert torch.equal(as_numpy, ops.mani_noise(x, 300, z, n_bands=8, gamma=1.8, backend=backend))
    step = step_coefficients(99, 89, eta=1.0)
    options = dict(amplitude_cut_range=np.float64(3), phase_cut_range=np.int64(2), delta=np.float64(0.3))
    exchanged = ops.exchange_update(
        x,
        z,
        x,
        z,
        z,
        step=step,
        forward_noise_steps=np.int64(50),
        phase_mode="project",
        backend=backend,
        **options,
    )
    plain = dict(amplitude_cut_range=3.0, phase_cut_range=2, delta=0.3)
    expected = ops.exchange_update(x, z, x, z, z, step=step, phase_mode="project", backend=backend, **plain)
    assert torch.equal(exchanged, expected)
    config = PurifierConfig(n_bands=np.int64(8), forward_noise_steps=np.int32(50), delta=np.float64(0.3))
    assert (
        type(config.n_bands) is int
        and type(config.forward_noise_steps) is int
        and type(config.delta) is float
    )


def test_unbounded_options_are_accepted():
    """As the reference accepts them: no phase clip past pi, every coefficient exchanged, and
    weights that grow with the band magnitude."""
    PurifierConfig(delta=INF, amplitude_cut_range=INF, phase_cut_range=1e9, gamma=-1.0, forward_noise_steps=0)


def test_meta_tensor_is_named_for_a_parameterless_model():
    """A plain callable has no device to compare with; a meta tensor still gets a named error
    rather than failing in the value checks' read-back."""
    with pytest.raises(ValueError, match="meta tensor"):
        Purifier(lambda x, t: torch.zeros_like(x), SMALL).purify(torch.rand(1, 3, 8, 8, device="meta"))


def test_out_of_range_is_clamped_only_when_asked(purifier):
    x = torch.rand(1, 3, 8, 8) * 1.2 - 0.1
    out = purifier.purify(x, clamp=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and (0 <= out).all() and (out <= 1).all()
    tiny_overshoot = torch.full((1, 3, 8, 8), 1 + 5e-5)
    purifier.purify(tiny_overshoot)  # within the documented tolerance


def test_device_mismatch_is_named():
    model = LinearEps(3).to("meta")
    with pytest.raises(ValueError, match="is on cpu but the diffusion model is on meta"):
        Purifier(model, SMALL).purify(torch.rand(1, 3, 8, 8))


def test_generator_on_wrong_device_is_named(purifier):
    class FakeGen(torch.Generator):
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="generator is on cuda"):
        purifier.purify(torch.rand(1, 3, 8, 8), generator=FakeGen())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(purifier, dtype):
    x = torch.rand(2, 3, 8, 8)
    out = purifier.purify(x.to(dtype), generator=torch.Generator().manual_seed(0))
    ref = purifier.purify(x.to(dtype).float(), generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-5}[dtype]
    assert torch.allclose(out.float(), ref, atol=tol)


def test_learned_sigma_models_keep_first_channels():
    torch.manual_seed(0)
    sigma_model = LinearEps(3, sigma_channels=True)
    plain = LinearEps(3)
    with torch.no_grad():
        plain.conv.weight.copy_(sigma_model.conv.weight[:3])
        plain.conv.bias.copy_(sigma_model.conv.bias[:3])
    x = torch.rand(2, 3, 8, 8)
    a = Purifier(sigma_model, SMALL).purify(x, generator=torch.Generator().manual_seed(1))
    b = Purifier(plain, SMALL).purify(x, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-6)


def test_model_returning_wrong_channels_is_named():
    bad = lambda x, t: torch.zeros(x.shape[0], 5, *x.shape[2:])
    with pytest.raises(ValueError, match="returned 5 channels for a 3-channel input"):
        Purifier(bad, SMALL).purify(torch.rand(1, 3, 8, 8))


def test_model_resolution_resizes_and_returns_input_size():
    seen = []

    def model(x, t):
        seen.append(tuple(x.shape[-2:]))
        return dummy_eps_model(x, t)

    config = SMALL.replace(model_resolution=(16, 16))
    out = Purifier(model, config).purify(torch.rand(1, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 12, 12) and set(seen) == {(16, 16)}


def test_batched_and_separate_model_calls_agree():
    torch.manual_seed(0)
    model = LinearEps(3)
    x = torch.rand(2, 3, 8, 8)
    a = Purifier(model, SMALL).purify(x, generator=torch.Generator().manual_seed(3))
    b = Purifier(model, SMALL.replace(batch_model_calls=False)).purify(
        x, generator=torch.Generator().manual_seed(3)
    )
    assert torch.allclose(a, b, atol=1e-6)


def test_reference_input_mode_makes_one_model_call_per_step():
    calls = []

    def model(x, t):
        calls.append(x.shape[0])
        return dummy_eps_model(x, t)

    Purifier(model, SMALL.replace(reference="input")).purify(torch.rand(2, 3, 8, 8))
    assert calls == [2, 2]  # two steps, batch 2, no reference call


def test_exchange_off_is_diffpure_style_sampling():
    calls = []

    def model(x, t):
        calls.append(x.shape[0])
        return dummy_eps_model(x, t)

    config = SMALL.replace(mani=False, exchange=False)
    z = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    labels = ["round_renoise", "ddpm_update_noise", "ddpm_update_noise"]
    out = Purifier(model, config).purify(torch.rand(2, 3, 8, 8), noise=RecordedNoise(z, labels))
    assert calls == [2, 2] and out.shape == (2, 3, 8, 8)


def test_defended_classifier_votes():
    torch.manual_seed(0)
    purifier = Purifier(LinearEps(3), SMALL)

    class Fixed(torch.nn.Module):
        """Class 0 for the first run, class 2 for the next two."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            logits = torch.zeros(x.shape[0], 4)
            logits[:, 0 if self.calls == 1 else 2] = 1.0
            return logits

    vote = DefendedClassifier(purifier, Fixed(), num_ensemble_runs=3).vote(torch.rand(2, 3, 8, 8))
    assert vote.prediction.tolist() == [2, 2]
    assert vote.counts.tolist() == [[1, 0, 2, 0]] * 2
    assert torch.allclose(vote.logits[0], torch.tensor([1 / 3, 0, 2 / 3, 0]))
    with pytest.raises(ValueError, match="num_ensemble_runs"):
        DefendedClassifier(purifier, Fixed(), num_ensemble_runs=0)


def test_compat_preprocess_then_classify_equals_forward():
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    max_t, steps = get_diffusion_params("30", "2")
    pf = PurificationForward(clf, LinearEps(3), max_t, steps, "ddpm", False, "cpu", 10, 10, 0.3, 50.0)
    x = torch.rand(2, 3, 8, 8)
    torch.manual_seed(5)
    logits = pf(x)
    torch.manual_seed(5)
    assert torch.equal(pf.classify(pf.preprocess(x)), logits)


def test_compat_imagenet_path_resizes_normalises_and_splits_sigma():
    sizes = []
    sigma_model = LinearEps(3, sigma_channels=True)

    def model(x, t):
        sizes.append(tuple(x.shape[-2:]))
        return sigma_model(x, t)

    pf = PurificationForward(torch.nn.Flatten(), model, [9], [[9]], "ddim", True, "cpu")
    x = torch.rand(1, 3, 224, 224)
    torch.manual_seed(0)
    x_clf, _ = pf.get_img_logits(x)
    assert x_clf.shape == (1, 3, 224, 224) and set(sizes) == {(256, 256)}
    torch.manual_seed(0)
    plain = Purifier(model, pf.purifier.config).purify(x)
    assert torch.allclose(x_clf, imagenet_normalize(plain))


def test_compat_rejects_fractional_forward_noise_steps():
    with pytest.raises(ValueError, match="whole number"):
        PurificationForward(None, dummy_eps_model, [9], [[9]], "ddpm", False, "cpu", forward_noise_steps=50.5)


@pytest.mark.parametrize(
    "shape, mani",
    [((2, 3, 32, 32), False), ((1, 1, 31, 33), True), ((3, 3, 24, 40), False)],
    ids=["B2-C3-32", "B1-C1-31x33-mani", "B3-C3-24x40"],
)
def test_reference_structure_baseline_matches_vectorised(shape, mani):
    config = PurifierConfig(
        rounds=(Round.from_total(50, 5), Round.from_total(20, 2)),
        mani=mani,
        amplitude_cut_range=6,
        phase_cut_range=4,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen) * 2 - 1
    noise = [torch.randn(shape, generator=gen) for _ in range(1 + 10 + 1 + 4)]
    fast = purify_diffusion(dummy_eps_model, x, config, RecordedNoise(noise))
    slow = ReferenceStructurePurifier(dummy_eps_model, config).purify_diffusion(x, RecordedNoise(noise))
    assert (fast - slow).abs().max() <= 1e-5


def test_reference_structure_baseline_refuses_options_it_does_not_implement():
    with pytest.raises(ValueError, match="only the reference purifier's options"):
        ReferenceStructurePurifier(dummy_eps_model, PurifierConfig(phase_mode="project"))
