"""Precision modes for the diffusion model, the one part of a purification whose dtype may change.

- ``"fp32"`` (fp32-faithful): the model as given. The result matches the reference path within
  its tolerance; torch's own TF32 switches (``torch.backends.cuda.matmul.allow_tf32``,
  ``torch.backends.cudnn.allow_tf32``) apply as they do to the reference.
- ``"bf16"``: a bf16 copy of the weights, fed bf16 inputs (channels_last on request), returning
  fp32. The spectral math (MANI, exchange, update) stays fp32 whatever the model's precision.

Example::

    fast_model = prepare_model(eps_model, "bf16", channels_last=True, compile_model=False)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .validation import model_channels

PRECISIONS = ("fp32", "bf16")


class LowPrecisionEpsModel(nn.Module):
    """``eps_model(x, t)`` on a converted copy of the weights: x is cast to ``dtype`` (and to
    channels_last when asked), ``t`` stays fp32, and the output comes back in fp32.

    The copy is made once, here; later in-place changes to the source model's weights are not
    seen (``GraphedPurifier`` notices them and rebuilds the copy)."""

    def __init__(self, eps_model: nn.Module, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True):
        super().__init__()
        if not isinstance(eps_model, nn.Module):
            raise TypeError(f"a {dtype} copy needs the model as an nn.Module, got {type(eps_model).__name__}")
        self.dtype = dtype
        self.channels_last = channels_last
        model = copy.deepcopy(eps_model).to(dtype)
        self.inner = model.to(memory_format=torch.channels_last) if channels_last else model
        self.in_channels = model_channels(eps_model)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x, t).float().contiguous()


def prepare_model(
    eps_model, precision: str = "fp32", *, channels_last: bool = True, compile_model: bool = False
):
    """The model a purifier should call in ``precision`` (see the module docstring).

    compile_model: wrap the result in ``torch.compile`` (no inductor CUDA graphs, so that the
    purifier's own capture can contain it). The first calls compile; warm up before timing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = eps_model
    if precision == "bf16":
        model = LowPrecisionEpsModel(eps_model, torch.bfloat16, channels_last=channels_last)
    if compile_model:
        model = torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False)
    return model
