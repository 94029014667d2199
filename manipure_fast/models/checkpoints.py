"""Loading the reference purifier's diffusion checkpoints without its code.

- DiffPure's CIFAR-10 score_sde checkpoint (``checkpoint_8.pth``): the weights that count are
  the **EMA shadow parameters**, copied onto ``parameters()`` by position, exactly as the
  reference does (its ``model`` entry carries a ``module.`` prefix and is never loaded). The
  count and every shape are checked first; the raw weights are never used as a fallback.
- guided-diffusion's ``256x256_diffusion_uncond.pt``: a plain state dict, loaded strictly after
  checking every key and shape.
- a diffusers ``UNet2DModel`` folder (``save_pretrained`` layout).

Each error names the first mismatching tensor. Example::

    model = load_ddpmpp_checkpoint("checkpoint_8.pth")            # eps model, eval mode
    model = load_adm_checkpoint("256x256_diffusion_uncond.pt")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .adm import ADMConfig, ADMUNet
from .ddpmpp import DDPMpp, DDPMppConfig


class CheckpointError(ValueError):
    """The checkpoint does not fit the architecture; the message names the first mismatch."""


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or truncated files
        raise CheckpointError(f"could not read checkpoint {path}: {error}") from error


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def copy_by_position(model: torch.nn.Module, tensors: Iterable[torch.Tensor], source: str) -> None:
    """Copy ``tensors`` onto ``model.parameters()`` in order, after checking count and shapes."""
    named = list(model.named_parameters())
    tensors = list(tensors)
    for index, ((name, param), tensor) in enumerate(zip(named, tensors)):
        if not isinstance(tensor, torch.Tensor) or _shape(tensor) != _shape(param):
            got = _shape(tensor) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(
                f"{source} tensor {index} ({name}) has shape {got}, expected {_shape(param)}"
            )
    if len(tensors) != len(named):
        first = (
            f"first missing: {named[len(tensors)][0]} {_shape(named[len(tensors)][1])}"
            if len(tensors) < len(named)
            else f"first extra: tensor {len(named)}"
        )
        raise CheckpointError(
            f"{source} has {len(tensors)} tensors but the model has {len(named)} parameters; {first}"
        )
    with torch.no_grad():
        for (_, param), tensor in zip(named, tensors):
            param.copy_(tensor)


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Every key of the model present with its shape, and no extra keys."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"{source} lacks {key} {_shape(value)}")
        if _shape(state[key]) != _shape(value):
            raise CheckpointError(f"{source} {key} has shape {_shape(state[key])}, expected {_shape(value)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{source} has {len(extra)} unexpected keys; first: {extra[0]}")


def load_ddpmpp_checkpoint(path: str | Path, config: DDPMppConfig | dict | None = None) -> DDPMpp:
    """A score_sde DDPM++ checkpoint, EMA weights. ``config``: a DDPMppConfig, a parsed score_sde
    yml dict, or None for the CIFAR-10 deep model (nf 128, 8 blocks per level)."""
    if isinstance(config, dict):
        config = DDPMppConfig.from_score_sde(config)
    checkpoint = _read(path)
    if not isinstance(checkpoint, Mapping) or "ema" not in checkpoint:
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a score_sde checkpoint with an 'ema' entry (found {keys}); "
            f"the raw 'model' weights are deliberately not used"
        )
    ema = checkpoint["ema"]
    if not isinstance(ema, Mapping) or "shadow_params" not in ema:
        raise CheckpointError(f"{path}: 'ema' has no 'shadow_params'")
    model = DDPMpp(config)
    copy_by_position(model, ema["shadow_params"], f"{path} EMA")
    return model.eval()


def load_adm_checkpoint(path: str | Path, config: ADMConfig | dict | None = None) -> ADMUNet:
    """A guided-diffusion ADM state dict. ``config``: an ADMConfig, the merged guided-diffusion
    model config dict, or None for the unconditional ImageNet 256 model."""
    if isinstance(config, dict):
        config = ADMConfig.from_guided_diffusion(config)
    state = _read(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is not a state dict (got {type(state).__name__})")
    model = ADMUNet(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()
