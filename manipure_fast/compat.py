"""A drop-in for the reference purifier's ``PurificationForward`` (FreqPure, commit 392c315).

Swap the import and keep the call::

    from manipure_fast.compat import PurificationForward, get_diffusion_params
    max_t, steps = get_diffusion_params("1000", "100")
    pf = PurificationForward(clf, diffusion, max_t, steps, "ddpm", False, device,
                             amplitude_cut_range=10, phase_cut_range=10, delta=0.3,
                             forward_noise_steps=50)
    logits = pf(x)

Same results given the same noise: MANI is off (this is FreqPure), noise is drawn from the global
RNG in the reference's order (``torch.manual_seed`` works as before), the reverse steps and the
exchange follow the reference. Where the reference breaks, this works:
- ``preprocess`` runs (the reference's calls ``denoising_process`` with a missing argument) and
  returns exactly what ``forward`` feeds the classifier, so ``classify(preprocess(x)) == forward(x)``;
- learned-sigma (2C-channel) models work on the ImageNet path (the reference raises there);
- any channel count works (the reference hard-codes 3);
- ``forward_noise_steps`` may be given as an integral float (the reference raises a TypeError);
- odd image sizes use a correctly centred frequency grid (the reference's is one bin off).
Inputs are validated as ``Purifier.purify`` validates them (see validation.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PurifierConfig, rounds_from_reference
from .config import parse_schedule as _parse_schedule
from .noise import GlobalNoise, NoiseSource
from .purifier import Purifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_diffusion_params(
    max_timesteps: str,
    num_denoising_steps: str,
) -> tuple[list[int], list[list[int]]]:
    """The reference scripts' parser: ``("20,50", "5,5")`` -> ``([19, 49], [[3,7,11,15,19],
    [9,19,29,39,49]])``."""
    rounds = _parse_schedule(max_timesteps, num_denoising_steps)
    return [r.renoise_t for r in rounds], [list(r.timesteps) for r in rounds]


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


class PurificationForward(nn.Module):
    """The reference's constructor and methods, backed by this library's purifier."""

    def __init__(
        self,
        clf,
        diffusion,
        max_timestep,
        attack_steps,
        sampling_method,
        is_imagenet,
        device,
        amplitude_cut_range=10,
        phase_cut_range=10,
        delta=0.3,
        forward_noise_steps=50,
        *,
        noise: NoiseSource | None = None,
    ):
        super().__init__()
        if sampling_method not in ("ddpm", "ddim"):
            raise ValueError(f"sampling_method must be 'ddpm' or 'ddim', got {sampling_method!r}")
        if float(forward_noise_steps) != int(forward_noise_steps):
            raise ValueError(f"forward_noise_steps must be a whole number, got {forward_noise_steps!r}")
        self.clf = clf
        self.diffusion = diffusion
        self.device = device
        self.is_imagenet = bool(is_imagenet)
        self.max_timestep = list(max_timestep)
        self.attack_steps = [list(s) for s in attack_steps]
        self.sampling_method = sampling_method
        self.eta = 1 if sampling_method == "ddpm" else 0
        self.amplitude_cut_range = amplitude_cut_range
        self.phase_cut_range = phase_cut_range
        self.delta = delta
        self.forward_noise_steps = int(forward_noise_steps)
        self.noise = noise  # None: the global RNG, drawn in the reference's order
        config = PurifierConfig(
            rounds=rounds_from_reference(self.max_timestep, self.attack_steps),
            mani=False,
            amplitude_cut_range=amplitude_cut_range,
            phase_cut_range=phase_cut_range,
            delta=delta,
            forward_noise_steps=self.forward_noise_steps,
            sampling=sampling_method,
            model_resolution=(256, 256) if self.is_imagenet else None,
        )
        self.purifier = Purifier(diffusion, config)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier input ``forward`` would use: purified images in [0, 1] at the input
        size, ImageNet-normalised when ``is_imagenet``."""
        x_clf = self.purifier.purify(x, noise=self.noise if self.noise is not None else GlobalNoise())
        return imagenet_normalize(x_clf) if self.is_imagenet else x_clf

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x)

    def get_img_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_clf = self.preprocess(x)
        return x_clf, self.clf(x_clf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_img_logits(x)[1]
