"""The public purifier: ``Purifier`` (images in, purified images out) and
``DefendedClassifier`` (purify, classify, vote).

Example::

    purifier = Purifier(eps_model, PurifierConfig.preset("cifar10"))
    x_pure = purifier.purify(x, generator=torch.Generator().manual_seed(0))   # [B,C,H,W] in [0,1]
    defended = DefendedClassifier(purifier, classifier, num_ensemble_runs=10)
    vote = defended.vote(x)            # vote.prediction [B], vote.counts [B, K], vote.logits
    logits = defended(x)               # mean logits over the runs, differentiable
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import PurifierConfig
from .noise import GeneratorNoise, NoiseSource, as_noise_source
from .reference.sampler import EpsModel
from .sampler import purify_diffusion
from .validation import check_images, model_channels, model_device


def _check_backend_name(name: str) -> None:
    from .ops.registry import BACKENDS

    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")


def to_diffusion_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: ``clamp((x - 0.5) * 2, -1, 1)`` (the reference's clf2diff)."""
    return torch.clamp((x - 0.5) * 2, -1, 1)


def to_classifier_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: ``clamp(x / 2 + 0.5, 0, 1)`` (the reference's diff2clf)."""
    return torch.clamp((x / 2) + 0.5, 0, 1)


def purify_images(
    eps_model: EpsModel, x: torch.Tensor, config: PurifierConfig, noise: NoiseSource, backend: str | None
) -> torch.Tensor:
    """The whole purification of validated images ``x: [B, C, H, W]`` in [0, 1] (fp32 or fp64):
    resize to ``config.model_resolution`` if set, map to [-1, 1], all rounds, map back and resize
    back. The body that ``Purifier.purify`` runs eagerly and ``GraphedPurifier`` captures."""
    size = tuple(x.shape[-2:])
    resolution = config.model_resolution
    resize = resolution is not None and size != resolution
    if resize:
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
    x_diff = purify_diffusion(eps_model, to_diffusion_range(x), config, noise, backend)
    if resize:
        x_diff = F.interpolate(x_diff, size=size, mode="bilinear", align_corners=False)
    return to_classifier_range(x_diff)


class Purifier(nn.Module):
    """Diffusion purification with MANI noise and FreqPure exchange around any
    ``eps_model(x, t)`` (``x: [N, C, H, W]`` in [-1, 1], ``t: [N]`` float timesteps; models that
    return 2C channels, learned sigma, are handled).

    in_channels: the channel count to enforce; read from the model (``in_channels`` or
    ``config.in_channels``) when not given, unchecked when neither says.
    backend: "auto" (fused triton ops where they apply, else the reference), "triton" or
    "reference"; None defers to ``ops.use_backend`` / ``$MANIPURE_BACKEND`` (see ops.registry).
    """

    def __init__(
        self,
        eps_model: EpsModel,
        config: PurifierConfig | None = None,
        *,
        in_channels: int | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        if backend is not None:
            _check_backend_name(backend)
        self.backend = backend
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable as eps_model(x, t), got {type(eps_model).__name__}")
        self.eps_model = eps_model
        self.config = config if config is not None else PurifierConfig()
        if not isinstance(self.config, PurifierConfig):
            raise TypeError(f"config must be a PurifierConfig, got {type(self.config).__name__}")
        self.in_channels = in_channels if in_channels is not None else model_channels(eps_model)

    @classmethod
    def from_checkpoint(
        cls,
        kind: str,
        path,
        config: PurifierConfig | None = None,
        *,
        model_config=None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ) -> Purifier:
        """A purifier around a diffusion checkpoint the reference purifier's users own.

        kind "ddpmpp": DiffPure's CIFAR-10 score_sde checkpoint (EMA weights; default preset
        "cifar10"); "adm": guided-diffusion's 256x256 unconditional model (default preset
        "imagenet"); "diffusers": a ``UNet2DModel`` folder saved with ``save_pretrained`` or a
        ``.safetensors`` file with its ``.json`` sidecar (default config: PurifierConfig()).
        model_config overrides the architecture (a DDPMppConfig/ADMConfig or the original
        config dict).
        """
        from .models import checkpoints
        from .models.diffusers_unet import load_diffusers_unet

        loaders = {
            "ddpmpp": (lambda: checkpoints.load_ddpmpp_checkpoint(path, model_config), "cifar10"),
            "adm": (lambda: checkpoints.load_adm_checkpoint(path, model_config), "imagenet"),
            "diffusers": (lambda: load_diffusers_unet(path), None),
        }
        if kind not in loaders:
            raise ValueError(f"kind must be one of {sorted(loaders)}, got {kind!r}")
        load, preset = loaders[kind]
        model = load()
        if device is not None:
            model = model.to(device)
        if config is None:
            config = PurifierConfig.preset(preset) if preset else PurifierConfig()
        return cls(model, config, backend=backend)

    def purify(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | list | None = None,
        noise: NoiseSource | None = None,
        clamp: bool = False,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Purify images ``x: [B, C, H, W]`` in [0, 1]; returns the same shape and dtype in
        [0, 1]. fp16/bf16 inputs are upcast to fp32 for the whole computation. Noise comes from
        ``noise`` (a NoiseSource), else ``generator`` (one, or one per sample), else the global
        RNG. Differentiable with respect to ``x``."""
        x = check_images(
            x,
            channels=self.in_channels,
            device=model_device(self.eps_model),
            clamp=clamp,
            check_values=check_values,
        )
        source = as_noise_source(generator, noise)
        if isinstance(source, GeneratorNoise):
            source.check(x.shape[0], x.device)
        work = x if x.dtype == torch.float64 else x.to(torch.float32)
        return purify_images(self.eps_model, work, self.config, source, self.backend).to(x.dtype)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.purify(x, **kwargs)


@dataclass
class Vote:
    """The outcome of ``num_ensemble_runs`` purify-and-classify runs.

    prediction: int64 ``[B]``, the class with the most votes (ties go to the lowest index);
    counts: int64 ``[B, K]``, votes per class; logits: ``[B, K]``, the mean logits (differentiable).
    """

    prediction: torch.Tensor
    counts: torch.Tensor
    logits: torch.Tensor


class DefendedClassifier(nn.Module):
    """``classifier(purifier(x))``, repeated ``num_ensemble_runs`` times and voted (SPEC §2.3).

    ``forward`` returns the mean logits over the runs (differentiable, for attacks); ``vote``
    also returns the majority vote, which is the defended prediction the reference reports.
    The classifier takes images in [0, 1]; wrap any normalisation into it.

    purifier: a ``Purifier``, or a ``GraphedPurifier`` for inference.
    batch_runs: run the E ensemble members as one purification of E*B images instead of E
    purifications of B (faster; the same distribution, but a seed gives other draws than the
    sequential runs; recorded noise must then be shaped for E*B). A GraphedPurifier in
    throughput mode chunks the E*B batch to its ``max_batch``.
    """

    def __init__(
        self, purifier, classifier: nn.Module, num_ensemble_runs: int = 10, *, batch_runs: bool = False
    ):
        super().__init__()
        if not isinstance(num_ensemble_runs, int) or num_ensemble_runs < 1:
            raise ValueError(f"num_ensemble_runs must be an int >= 1, got {num_ensemble_runs!r}")
        if not callable(getattr(purifier, "purify", None)):
            raise TypeError(f"purifier must provide purify(x, ...), got {type(purifier).__name__}")
        self.purifier = purifier
        self.classifier = classifier
        self.num_ensemble_runs = num_ensemble_runs
        self.batch_runs = batch_runs

    def _run_logits(self, x: torch.Tensor, source: NoiseSource, clamp: bool) -> torch.Tensor:
        """Logits of every run: ``[E, B, K]``."""
        runs = self.num_ensemble_runs
        if self.batch_runs:
            pure = self.purifier.purify(x.repeat(runs, 1, 1, 1), noise=source, clamp=clamp)
            logits = self.classifier(pure)
            return logits.view(runs, x.shape[0], -1)
        # one source shared by all runs, in order
        return torch.stack(
            [self.classifier(self.purifier.purify(x, noise=source, clamp=clamp)) for _ in range(runs)]
        )

    def vote(
        self, x: torch.Tensor, *, generator=None, noise: NoiseSource | None = None, clamp: bool = False
    ) -> Vote:
        source = as_noise_source(generator, noise)
        logits = self._run_logits(x, source, clamp)
        counts = F.one_hot(logits.argmax(dim=2), logits.shape[2]).sum(dim=0)
        return Vote(counts.argmax(dim=1), counts, logits.mean(dim=0))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.vote(x, **kwargs).logits
