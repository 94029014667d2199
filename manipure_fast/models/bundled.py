"""The bundled default models, trained by ``python -m manipure_fast.train`` on Fashion-MNIST and
shipped as safetensors with JSON sidecars (seed, steps, wall time, test accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
UNET = WEIGHTS / "fashion_unet.safetensors"
CLASSIFIER = WEIGHTS / "fashion_classifier.safetensors"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled weights {path} are missing; retrain them with "
            f"`python -m manipure_fast.train {'diffusion' if path == UNET else 'classifier'}`"
        )
    return path


def load_bundled_unet() -> torch.nn.Module:
    """The epsilon-prediction UNet (diffusers ``UNet2DModel``, 1 channel, 32x32), eval mode."""
    from .diffusers_unet import load_diffusers_unet

    return load_diffusers_unet(_require(UNET))


def load_bundled_classifier() -> torch.nn.Module:
    from .classifier import load_classifier

    return load_classifier(_require(CLASSIFIER))


def bundled_metadata() -> dict:
    return {
        path.stem: json.loads(path.with_suffix(".json").read_text())
        for path in (UNET, CLASSIFIER)
        if path.with_suffix(".json").is_file()
    }
