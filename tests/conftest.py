"""Shared test fixtures. The golden data lives in ../shared/fixtures beside the checkout (SPEC
§4); tests that need it skip with the reason when it is absent."""

from __future__ import annotations

import os

# Triton kernels run on CPU tensors under the interpreter; it must be on before triton is imported.
# With it on, backend "auto" routes CPU tests through the interpreted fused kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def load_fixture(name: str):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"golden fixture {path} is absent (SPEC §4: ../shared/fixtures beside the checkout)")
    return torch.load(path, weights_only=True)


def dummy_eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fixtures' closed-form noise model."""
    return 0.1 * x + 0.001 * (t.view(-1, 1, 1, 1) / 1000.0)


class LinearEps(torch.nn.Module):
    """A tiny differentiable eps model with parameters (so device checks apply)."""

    def __init__(self, channels: int = 3, sigma_channels: bool = False):
        super().__init__()
        out = 2 * channels if sigma_channels else channels
        self.conv = torch.nn.Conv2d(channels, out, 3, padding=1)
        self.in_channels = channels
        with torch.no_grad():
            self.conv.weight.mul_(0.1)

    def forward(self, x, t):
        return self.conv(x) + 1e-3 * t.view(-1, 1, 1, 1).to(x.dtype)


@pytest.fixture
def fresh_seed():
    torch.manual_seed(1234)


def weight_off_the_clip_bounds(weight, inputs, options, tolerance=0.01):
    """``weight`` zeroed at the output pixels that the exact (fp64) ``exchange_update`` of ``inputs``
    (x_t, eps, ref_t, eps_ref, noise) puts within ``tolerance`` of a bound of its [0, 255] clip.
    There the clip's derivative (and, for |.|, the direction of a value near 0) turns on the sign
    of a difference below fp32's rounding error after a 256x256 transform, so no fp32
    implementation can be held to fp64 at those pixels. Pixels clipped by more keep their weight,
    so the gradient tests still exercise the clip masks."""
    import importlib

    from manipure_fast import ops

    # the module (the package's name `exchange` is its function)
    reference_exchange = importlib.import_module("manipure_fast.reference.exchange")

    clip = reference_exchange.pixels_to_diffusion
    pixels = []

    def capture(values):
        pixels.append(values)
        return clip(values)

    reference_exchange.pixels_to_diffusion = capture  # the exchange's [0, 255] values, before the clip
    try:
        with torch.no_grad():
            doubled = [None if t is None else t.double().cpu() for t in inputs]
            ops.exchange_update(*doubled, backend="reference", **options)
    finally:
        reference_exchange.pixels_to_diffusion = clip
    (values,) = pixels
    on_a_bound = (values.abs() < tolerance) | ((values - 255).abs() < tolerance)
    return weight.masked_fill(on_a_bound.to(weight.device), 0)
