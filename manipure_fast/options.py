"""The spectral options of SPEC §3, checked in one place.

``PurifierConfig`` and the public ops (``manipure_fast.ops.mani_noise`` and ``exchange_update``)
both call these checks, so every backend accepts the same options and refuses the same ones with
the same message, before anything reaches a kernel. Each check raises ``TypeError`` for a value
of the wrong kind and ``ValueError`` for one out of range, naming the option.

Accepted, and computed as the reference purifier computes them:
- ``gamma`` any finite real, negative too (the weights then grow with the band magnitude);
- infinite cut ranges (every coefficient is exchanged) and an infinite ``delta`` (no clip).

Numbers may be Python or numpy scalars (the callers convert them to Python numbers after the
checks); timesteps and ``n_bands`` must be integers, never ``bool`` or a float.

The checks are cached per set of values: the sampler calls the ops with the same options at every
step, and a cache hit costs well under a microsecond of host time.
"""

from __future__ import annotations

import functools
import math
import numbers

from .reference.schedule import NUM_TRAIN_TIMESTEPS

BAND_MODES = ("width", "count")
WEIGHT_MAPS = ("spectral", "kernel")
NORMALIZATIONS = ("rms", "max", "none")
PHASE_MODES = ("replace", "project")
RECONSTRUCTIONS = ("abs", "real")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_timestep(name: str, value: object) -> None:
    """An integer diffusion timestep in [0, NUM_TRAIN_TIMESTEPS)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int timestep, got {value!r} ({type(value).__name__})")
    if not 0 <= value < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"{name} must lie in [0, {NUM_TRAIN_TIMESTEPS}), got {value}")


def _cached_check(check):
    """``check``, cached per set of arguments; unhashable arguments (a list where a number
    belongs) skip the cache, so that ``check`` names them rather than ``lru_cache`` failing."""
    cached = functools.lru_cache(maxsize=64, typed=True)(check)

    @functools.wraps(check)
    def checked(*args):
        try:
            return cached(*args)
        except TypeError:
            return check(*args)

    return checked


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
    return float(value)


@_cached_check
def check_mani_options(
    n_bands: object, gamma: object, eps0: object, band_mode: object, weight_map: object, normalize: object
) -> None:
    """MANI's options (SPEC §1): the band count, the weight exponent and floor, and the modes."""
    if isinstance(n_bands, bool) or not isinstance(n_bands, numbers.Integral):
        raise TypeError(f"n_bands must be an int, got {n_bands!r} ({type(n_bands).__name__})")
    if n_bands < 1:
        raise ValueError(f"n_bands must be >= 1, got {n_bands}")
    if not math.isfinite(_check_real("gamma", gamma)):
        raise ValueError(f"gamma must be finite, got {gamma}")
    eps0 = _check_real("eps0", eps0)
    if not (0 < eps0 < math.inf):
        raise ValueError(f"eps0 must be finite and > 0, got {eps0}")
    check_choice("band_mode", band_mode, BAND_MODES)
    check_choice("weight_map", weight_map, WEIGHT_MAPS)
    check_choice("normalize", normalize, NORMALIZATIONS)


@_cached_check
def check_exchange_options(
    amplitude_cut_range: object,
    phase_cut_range: object,
    phase_mode: object,
    delta: object,
    reconstruct: object,
) -> None:
    """The frequency exchange's options (SPEC §2): the disc radii, the phase mode and its
    tolerance, and the reconstruction."""
    for name, value in (("amplitude_cut_range", amplitude_cut_range), ("phase_cut_range", phase_cut_range)):
        if _check_real(name, value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if _check_real("delta", delta) < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    check_choice("phase_mode", phase_mode, PHASE_MODES)
    check_choice("reconstruct", reconstruct, RECONSTRUCTIONS)
