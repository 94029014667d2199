"""Where the purifier's Gaussian noise comes from.

A noise source is asked for one tensor at a time, in the reference purifier's order of
consumption, with a label naming the use:
- ``"round_renoise"`` once at the start of each round;
- then per reverse step ``"reference_renoise"`` (only with ``reference="renoised"``) and
  ``"ddpm_update_noise"``. The update noise is drawn for "ddim" too, where it is multiplied by 0,
  because the reference does so and the RNG stream would otherwise drift from it.

Sources:
- ``GlobalNoise()``: ``torch.randn_like`` on the global RNG (drawn in float32), the reference's
  own behaviour, so ``torch.manual_seed(s)`` reproduces the reference purifier's stream on the same device.
- ``GeneratorNoise(g)``: one ``torch.Generator``, or one per sample (a list of B generators),
  which makes each image's result independent of the rest of the batch. Per-sample generators
  cost one small ``randn`` per image per draw; a single generator is the fast path.
- ``RecordedNoise(tensors, labels=None)``: replays recorded tensors in order, and checks labels
  when they are given (the golden fixtures record them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

LABELS = ("round_renoise", "reference_renoise", "ddpm_update_noise")


@runtime_checkable
class NoiseSource(Protocol):
    def draw(self, label: str, like: torch.Tensor) -> torch.Tensor:
        """A standard-normal tensor shaped, placed and typed like ``like``."""
        ...


class GlobalNoise:
    """Draws from the global RNG with ``torch.randn_like``, as the reference purifier does."""

    def draw(self, label: str, like: torch.Tensor) -> torch.Tensor:
        # Drawn in float32 (the reference's dtype) so a seed means the same noise whatever the
        # working dtype; identical to torch.randn_like(like) for float32.
        return torch.randn_like(like, dtype=torch.float32).to(like.dtype)


class GeneratorNoise:
    """Draws from one ``torch.Generator`` or from one generator per sample."""

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator]):
        if isinstance(generator, torch.Generator):
            self.generators: tuple[torch.Generator, ...] | None = None
            self.generator = generator
        else:
            gens = tuple(generator)
            if not gens or not all(isinstance(g, torch.Generator) for g in gens):
                raise TypeError(
                    f"generator must be a torch.Generator or a non-empty sequence of them, got {generator!r}"
                )
            self.generators, self.generator = gens, None

    def check(self, batch: int, device: torch.device) -> None:
        gens = self.generators if self.generators is not None else (self.generator,)
        if self.generators is not None and len(gens) != batch:
            raise ValueError(f"got {len(gens)} per-sample generators for a batch of {batch}")
        for g in gens:
            if g.device.type != device.type:
                raise ValueError(
                    f"generator is on {g.device} but the images are on {device}; "
                    f"create it with torch.Generator(device='{device.type}')"
                )

    def draw(self, label: str, like: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            noise = torch.randn(like.shape, generator=self.generator, device=like.device)
        else:
            noise = torch.stack(
                [torch.randn(like.shape[1:], generator=g, device=like.device) for g in self.generators]
            )
        return noise.to(like.dtype)  # drawn in float32 whatever the working dtype


class RecordedNoise:
    """Replays recorded noise tensors in order (for parity tests and exact reproduction)."""

    def __init__(self, tensors: Sequence[torch.Tensor], labels: Sequence[str] | None = None):
        self.tensors = list(tensors)
        self.labels = None if labels is None else list(labels)
        if self.labels is not None and len(self.labels) != len(self.tensors):
            raise ValueError(f"{len(self.tensors)} tensors but {len(self.labels)} labels")
        self.position = 0

    @property
    def remaining(self) -> int:
        return len(self.tensors) - self.position

    def draw(self, label: str, like: torch.Tensor) -> torch.Tensor:
        if self.position >= len(self.tensors):
            raise ValueError(f"recorded noise exhausted after {len(self.tensors)} draws (next use: {label})")
        if self.labels is not None and self.labels[self.position] != label:
            raise ValueError(
                f"recorded noise {self.position} is labelled "
                f"{self.labels[self.position]!r} but the sampler asked for {label!r}"
            )
        tensor = self.tensors[self.position]
        if tensor.shape != like.shape:
            raise ValueError(
                f"recorded noise {self.position} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(like.shape)}"
            )
        self.position += 1
        return tensor.to(device=like.device, dtype=like.dtype)


def draw_labels(config) -> tuple[str, ...]:
    """The labels of every draw one purification with ``config`` makes, in order (the plan a
    captured graph's noise buffers follow; tested against the samplers' actual draws)."""
    per_step = ("reference_renoise",) if config.exchange and config.reference == "renoised" else ()
    per_step += ("ddpm_update_noise",)
    labels: list[str] = []
    for round_ in config.rounds:
        labels.append("round_renoise")
        labels.extend(per_step * len(round_.timesteps))
    return tuple(labels)


def as_noise_source(generator=None, noise: NoiseSource | None = None) -> NoiseSource:
    """The source for a call: explicit ``noise`` wins, then ``generator``, then the global RNG."""
    if noise is not None and generator is not None:
        raise ValueError("pass either generator= or noise=, not both")
    if noise is not None:
        if not isinstance(noise, NoiseSource):
            raise TypeError(f"noise must provide draw(label, like), got {type(noise).__name__}")
        return noise
    if generator is not None:
        return GeneratorNoise(generator)
    return GlobalNoise()
