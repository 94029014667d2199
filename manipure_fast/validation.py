"""Checks at the public boundary. Each raises ``TypeError``/``ValueError`` naming the bad value
and what was expected; nothing is clamped silently and nothing reaches a kernel malformed.

The finiteness and range checks read their statistics back from the device together: one sync per
purification call at the boundary, never inside a step. ``check_values=False`` skips them for
latency-critical callers that validate upstream.
"""

from __future__ import annotations

import torch

# Inputs may overshoot [0, 1] by this much (float round-off from upstream transforms); the
# purifier's own clf2diff clamp then maps them onto the range, exactly as the reference does.
RANGE_TOLERANCE = 1e-4
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_images(
    x: object,
    *,
    channels: int | None = None,
    device: torch.device | None = None,
    clamp: bool = False,
    check_values: bool = True,
    name: str = "x",
) -> torch.Tensor:
    """Validate a batch of images ``[B, C, H, W]`` in [0, 1]; returns it, clamped only when
    ``clamp=True`` is asked for."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images [B, C, H, W], got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor in [0, 1] (float32/float64/float16/"
            f"bfloat16), got {x.dtype}; convert uint8 images with x.float() / 255"
        )
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W], got {x.ndim} dims {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); B must be >= 1")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has an empty image plane (shape {tuple(x.shape)})")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no pixels); purification needs its values")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the diffusion model takes "
            f"{channels} (shape {tuple(x.shape)})"
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"{name} is on {x.device} but the diffusion model is on {device}; "
            f"move one of them (x.to('{device}'))"
        )
    if check_values:
        values = x.detach()
        # One read-back for all three statistics (a single device sync).
        bad, low, high = torch.stack(
            [(~torch.isfinite(values)).sum().double(), values.min().double(), values.max().double()]
        ).tolist()
        if bad:
            raise ValueError(f"{name} has {int(bad)} non-finite values (NaN or inf)")
        if not clamp and (low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE):
            raise ValueError(
                f"{name} has values in [{low:.4g}, {high:.4g}], outside [0, 1]; "
                f"images must be in [0, 1] (pass clamp=True to clamp them)"
            )
    return x.clamp(0, 1) if clamp else x


def model_device(model: object) -> torch.device | None:
    """The device of a module's first parameter or buffer, or None for a plain callable."""
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return None


def model_channels(model: object) -> int | None:
    """The input channel count a model advertises (``in_channels`` or diffusers'
    ``config.in_channels``), or None."""
    channels = getattr(model, "in_channels", None)
    if channels is None:
        channels = getattr(getattr(model, "config", None), "in_channels", None)
    return int(channels) if isinstance(channels, int) else None
