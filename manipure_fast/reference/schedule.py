"""The noise schedule (SPEC conventions) and the per-step sampler coefficients.

``alphas_cumprod()`` is built exactly as the reference purifier builds it: float64 linspace
betas cast to float32, then a float32 cumulative product of ``1 - beta``. Using the same
rounding keeps parity with the reference at the ulp level rather than at 1e-6.

All coefficients are computed once per schedule on the host in float32 tensor arithmetic, in the
reference's own order of operations, and handed to the steps as Python floats: nothing here runs
inside a step, and nothing needs a device sync.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


@functools.lru_cache(maxsize=1)
def _alphas_cumprod_padded() -> torch.Tensor:
    betas = torch.from_numpy(np.linspace(1e-4, 2e-2, NUM_TRAIN_TIMESTEPS, dtype=np.float64)).float()
    return (1 - torch.cat([torch.zeros(1), betas], dim=0)).cumprod(dim=0)


def alphas_cumprod_padded() -> torch.Tensor:
    """float32 ``[1001]``; index ``k`` holds ``abar_{k-1}``, so index 0 is ``abar_{-1} = 1``."""
    return _alphas_cumprod_padded().clone()


def abar(t: int) -> torch.Tensor:
    """``abar_t`` as a float32 0-d CPU tensor, for ``t`` in [-1, 999]."""
    if not -1 <= t < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"timestep must lie in [-1, {NUM_TRAIN_TIMESTEPS}), got {t}")
    return _alphas_cumprod_padded()[t + 1]


@dataclass(frozen=True)
class NoiseCoefficients:
    """``x_t = signal * x + noise * z``."""

    signal: float  # sqrt(abar_t)
    noise: float  # sqrt(1 - abar_t)


# Cached: the ops compute the reference estimate's coefficients on every call (about 10 us of
# tensor arithmetic each time otherwise). The result is frozen, so sharing it is safe.
@functools.lru_cache(maxsize=NUM_TRAIN_TIMESTEPS + 1)
def noise_coefficients(t: int) -> NoiseCoefficients:
    a = abar(t)
    return NoiseCoefficients(float(a.sqrt()), float((1.0 - a).sqrt()))


@dataclass(frozen=True)
class StepCoefficients:
    """One reverse step from ``t`` to ``t_next`` (SPEC §2.1).

    ``x0 = (x_t - sqrt_one_minus_abar * eps) / sqrt_abar``
    ``x_next = sqrt_abar_next * x0 + c1 * z + c2 * eps``
    """

    t: int
    t_next: int
    sqrt_abar: float
    sqrt_one_minus_abar: float
    sqrt_abar_next: float
    c1: float
    c2: float


def step_coefficients(t: int, t_next: int, eta: float) -> StepCoefficients:
    at, at_next = abar(t), abar(t_next)
    c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
    # Rounding can push the radicand a hair below zero when c1**2 ~ 1 - abar_next; it is zero.
    c2 = ((1 - at_next) - c1**2).clamp_min(0).sqrt()
    return StepCoefficients(
        t, t_next, float(at.sqrt()), float((1 - at).sqrt()), float(at_next.sqrt()), float(c1), float(c2)
    )


def round_step_coefficients(timesteps: tuple[int, ...], eta: float) -> list[StepCoefficients]:
    """Coefficients of a round's steps in execution order: ``(t_K, t_{K-1}), ..., (t_1, -1)``."""
    nexts = (-1,) + tuple(timesteps[:-1])
    return [step_coefficients(t, n, eta) for t, n in zip(reversed(timesteps), reversed(nexts))]
