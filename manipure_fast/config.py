"""Purifier configuration: every option of SPEC §3, the rounds of a purification, and the
presets from the reference purifier's scripts.

A ``Round`` is what the reference purifier calls one (max_timestep, attack_steps) pair: re-noise
the current image to ``renoise_t``, then run reverse steps at ``timesteps`` from the largest to
the smallest. ``Round.from_total(T, K)`` builds the sequence the reference's
``get_diffusion_params`` builds: ``renoise_t = T - 1`` and ``timesteps = [s-1 for s in
range(T//K, T+1, T//K)]``, so (1000, 100) gives 999 and 9, 19, ..., 999, and (1000, 3) gives 999
and 332, 665, 998.

Example::

    config = PurifierConfig(rounds=cifar10_rounds(), mani=True)
    config = PurifierConfig.preset("imagenet")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .options import check_choice, check_exchange_options, check_mani_options, check_timestep
from .reference.schedule import NUM_TRAIN_TIMESTEPS


@dataclass(frozen=True)
class Round:
    """One purification round: re-noise to ``renoise_t``, then reverse steps at ``timesteps``
    (stored ascending, executed from the last to the first)."""

    renoise_t: int
    timesteps: tuple[int, ...]

    def __post_init__(self) -> None:
        check_timestep("renoise_t", self.renoise_t)
        if isinstance(self.timesteps, (str, bytes)) or not hasattr(self.timesteps, "__iter__"):
            raise TypeError(f"Round timesteps must be a sequence of ints, got {self.timesteps!r}")
        steps = tuple(self.timesteps)
        for step in steps:
            check_timestep("each of a Round's timesteps", step)
        steps = tuple(int(step) for step in steps)  # numpy integers become ints
        object.__setattr__(self, "renoise_t", int(self.renoise_t))
        object.__setattr__(self, "timesteps", steps)
        if not steps:
            raise ValueError("a Round needs at least one reverse timestep")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"Round timesteps must be strictly increasing, got {steps}")

    @classmethod
    def from_total(cls, total: int, num_steps: int) -> Round:
        """The reference's (max_timesteps, num_denoising_steps) pair, e.g. (1000, 100)."""
        if not (isinstance(total, int) and isinstance(num_steps, int)):
            raise TypeError(f"total and num_steps must be ints, got {total!r}, {num_steps!r}")
        if not 1 <= num_steps <= total <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(
                f"need 1 <= num_steps <= total <= {NUM_TRAIN_TIMESTEPS}, "
                f"got total={total}, num_steps={num_steps}"
            )
        stride = total // num_steps
        return cls(total - 1, tuple(s - 1 for s in range(stride, total + 1, stride)))


def parse_schedule(max_timesteps: str, num_denoising_steps: str) -> tuple[Round, ...]:
    """Parse the reference scripts' comma lists, e.g. ``("20,50", "5,5")``."""
    totals = [int(s) for s in str(max_timesteps).split(",")]
    counts = [int(s) for s in str(num_denoising_steps).split(",")]
    if len(totals) != len(counts):
        raise ValueError(
            f"{max_timesteps!r} and {num_denoising_steps!r} list different numbers "
            f"of rounds ({len(totals)} and {len(counts)})"
        )
    return tuple(Round.from_total(t, k) for t, k in zip(totals, counts))


def rounds_from_reference(max_timestep: list[int], attack_steps: list[list[int]]) -> tuple[Round, ...]:
    """Rounds from the reference's already-parsed lists (its ``get_diffusion_params`` output)."""
    if len(max_timestep) != len(attack_steps):
        raise ValueError(
            f"max_timestep has {len(max_timestep)} rounds but attack_steps has {len(attack_steps)}"
        )
    return tuple(Round(int(t), tuple(int(s) for s in seq)) for t, seq in zip(max_timestep, attack_steps))


def cifar10_rounds() -> tuple[Round, ...]:
    return (Round.from_total(1000, 100),)


def cifar10_v2_rounds() -> tuple[Round, ...]:
    return (Round.from_total(20, 5),) * 5 + (Round.from_total(50, 5),) * 5


def imagenet_rounds() -> tuple[Round, ...]:
    return (Round.from_total(50, 5),) * 8


def attack_surrogate_rounds(total: int = 1000) -> tuple[Round, ...]:
    return (Round.from_total(total, 1),)


@dataclass(frozen=True)
class PurifierConfig:
    """Every option of SPEC §3. Defaults are the reference purifier's CIFAR-10 script with MANI on.

    rounds:               the purification schedule (see ``Round``).
    mani:                 magnitude-adaptive noise at every round re-noise; False = uniform noise.
    n_bands, gamma, eps0: MANI band count and weight ``1 / (M_i**gamma + eps0)``.
    band_mode:            "width" (equal-width rings) or "count" (equal-count rings).
    weight_map:           "spectral" (``|ifft2(w[band] * F)|``) or "kernel" (``|ifft2(w[band])|``).
    normalize:            intensity-map normalisation per plane: "rms", "max" or "none".
    mani_detach:          stop the gradient through the intensity map W (explicit, off by default).
    exchange:             FreqPure's frequency exchange in every reverse step. False (with
                          mani=False) gives DiffPure-style sampling: no reference estimate, no
                          second model call.
    amplitude_cut_range, phase_cut_range: exchange disc radii in frequency-index units.
    phase_mode:           "replace" (reference parity) or "project" (paper Eq. 13, uses delta).
    reconstruct:          "abs" (reference parity) or "real".
    reference:            "renoised" (x_ref0 from a model call at forward_noise_steps; parity) or
                          "input" (x_ref0 = the round input, no extra model call).
    sampling:             "ddpm" (eta = 1) or "ddim" (eta = 0).
    batch_model_calls:    evaluate the main and the reference model calls as one call on 2B.
    model_resolution:     if set, inputs are resized bilinearly to it before purification and
                          back afterwards (the reference's ImageNet 224 -> 256 -> 224).
    """

    rounds: tuple[Round, ...] = field(default_factory=cifar10_rounds)
    mani: bool = True
    n_bands: int = 8
    gamma: float = 1.8
    eps0: float = 1e-6
    band_mode: Literal["width", "count"] = "width"
    weight_map: Literal["spectral", "kernel"] = "spectral"
    normalize: Literal["rms", "max", "none"] = "rms"
    mani_detach: bool = False
    exchange: bool = True
    amplitude_cut_range: float = 10
    phase_cut_range: float = 10
    phase_mode: Literal["replace", "project"] = "replace"
    delta: float = 0.3
    reconstruct: Literal["abs", "real"] = "abs"
    reference: Literal["renoised", "input"] = "renoised"
    forward_noise_steps: int = 50
    sampling: Literal["ddpm", "ddim"] = "ddpm"
    batch_model_calls: bool = True
    model_resolution: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        rounds = tuple(self.rounds)
        object.__setattr__(self, "rounds", rounds)
        if not rounds or not all(isinstance(r, Round) for r in rounds):
            raise TypeError(f"rounds must be a non-empty sequence of Round, got {self.rounds!r}")
        check_mani_options(
            self.n_bands, self.gamma, self.eps0, self.band_mode, self.weight_map, self.normalize
        )
        check_exchange_options(
            self.amplitude_cut_range, self.phase_cut_range, self.phase_mode, self.delta, self.reconstruct
        )
        check_choice("reference", self.reference, ("renoised", "input"))
        check_choice("sampling", self.sampling, ("ddpm", "ddim"))
        check_timestep("forward_noise_steps", self.forward_noise_steps)
        # numpy scalars pass the checks; the config holds Python numbers, as the ops take them.
        for name in ("n_bands", "forward_noise_steps"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("gamma", "eps0", "amplitude_cut_range", "phase_cut_range", "delta"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.model_resolution is not None:
            h, w = (int(v) for v in self.model_resolution)
            if h < 1 or w < 1:
                raise ValueError(f"model_resolution must be positive, got {self.model_resolution}")
            object.__setattr__(self, "model_resolution", (h, w))

    @property
    def eta(self) -> float:
        return 1.0 if self.sampling == "ddpm" else 0.0

    def replace(self, **changes) -> PurifierConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> PurifierConfig:
        """Named presets from the reference purifier's scripts: "cifar10", "cifar10_v2",
        "imagenet" (8 x (50, 5), 224 -> 256 resizing) and "attack_surrogate" (one (1000, 1))."""
        presets = {
            "cifar10": dict(rounds=cifar10_rounds()),
            "cifar10_v2": dict(rounds=cifar10_v2_rounds(), amplitude_cut_range=3, phase_cut_range=3),
            "imagenet": dict(rounds=imagenet_rounds(), model_resolution=(256, 256)),
            "attack_surrogate": dict(rounds=attack_surrogate_rounds()),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})
