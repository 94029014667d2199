"""DDPM++ (score_sde's NCSNpp with BigGAN residual blocks), the architecture of DiffPure's
CIFAR-10 checkpoint (``checkpoint_8.pth``, continuous VP, 106.6 M parameters), written from the
published description and the parameter manifest in ``shared/fixtures`` (SPEC §4).

The configuration this module supports is the one that checkpoint uses: positional time
embedding, conditional, no FIR, no progressive growing, centered data, ``scale_by_sigma=False``.
Parameter names and order are the original's (``all_modules.<i>...``), so the EMA shadow
parameters of a score_sde checkpoint copy onto ``parameters()`` by position.

Speed: attention runs through ``scaled_dot_product_attention``; GroupNorm computes in float32
even under bf16 autocast. ``x: [B, 3, 32, 32]`` in [-1, 1], ``t: [B]`` float timesteps (passed
as the reference passes them, unscaled) -> eps ``[B, 3, 32, 32]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DDPMppConfig:
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    image_size: int = 32
    num_channels: int = 3
    dropout: float = 0.1
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000

    @classmethod
    def from_score_sde(cls, config: dict) -> DDPMppConfig:
        """From a parsed score_sde yml (``{'model': {...}, 'data': {...}}``), checking that it
        is the supported variant."""
        model, data = config["model"], config["data"]
        supported = dict(
            name="ncsnpp",
            resblock_type="biggan",
            progressive="none",
            progressive_input="none",
            embedding_type="positional",
            fir=False,
            conditional=True,
            skip_rescale=True,
            scale_by_sigma=False,
            resamp_with_conv=True,
            attention_type="ddpm",
        )
        for key, value in supported.items():
            if model.get(key, value) != value:
                raise ValueError(
                    f"unsupported score_sde option model.{key}={model[key]!r} (supported: {value!r})"
                )
        if not data.get("centered", True):
            raise ValueError("unsupported score_sde option data.centered=False")
        return cls(
            nf=model["nf"],
            ch_mult=tuple(model["ch_mult"]),
            num_res_blocks=model["num_res_blocks"],
            attn_resolutions=tuple(model["attn_resolutions"]),
            image_size=data["image_size"],
            num_channels=data["num_channels"],
            dropout=model["dropout"],
            sigma_min=model["sigma_min"],
            sigma_max=model["sigma_max"],
            num_scales=model["num_scales"],
        )


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 (bf16-safe), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def _conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)


def positional_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """score_sde's sinusoidal embedding: ``[sin(t w), cos(t w)]`` with
    ``w_k = exp(-k log(max_positions) / (dim/2 - 1))``."""
    half = dim // 2
    scale = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -scale)
    args = timesteps.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class NIN(nn.Module):
    """Per-pixel linear map with the original's parameter layout: ``W: [in, out]``, ``b: [out]``."""

    def __init__(self, in_dim: int, num_units: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(in_dim, num_units))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W.to(x.dtype)) + self.b.to(x.dtype)[:, None, None]


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels, output ``(x + h) / sqrt(2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm_0 = _norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.GroupNorm_0(x)
        q, k, v = (
            m(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.NIN_0, self.NIN_1, self.NIN_2)
        )
        attended = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), as the original
        out = self.NIN_3(attended.transpose(-1, -2).reshape(b, c, h, w))
        return (x + out) / np.sqrt(2.0)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN residual block with optional nearest up / average-pool down sampling, time
    conditioning added after the first conv, skip rescaled by 1/sqrt(2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _norm(in_ch)
        self.Conv_0 = _conv(in_ch, out_ch, 3)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, 3)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv(in_ch, out_ch, 1)
        self.up, self.down, self.in_ch, self.out_ch = up, down, in_ch, out_ch

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.GroupNorm_0(x))
        if self.up:
            h, x = (F.interpolate(v, scale_factor=2, mode="nearest") for v in (h, x))
        elif self.down:
            h, x = (F.avg_pool2d(v, 2) for v in (h, x))
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / np.sqrt(2.0)


class DDPMpp(nn.Module):
    """The DDPM++ UNet. ``forward(x, t) -> eps``; see the module docstring."""

    def __init__(self, config: DDPMppConfig | None = None):
        super().__init__()
        cfg = self.model_config = config or DDPMppConfig()
        self.in_channels = cfg.num_channels
        sigmas = np.exp(np.linspace(np.log(cfg.sigma_max), np.log(cfg.sigma_min), cfg.num_scales))
        # Unused by this configuration's forward, kept so state_dicts match the original's.
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64))
        nf, temb_dim = cfg.nf, cfg.nf * 4
        resolutions = [cfg.image_size // 2**i for i in range(len(cfg.ch_mult))]

        def block(in_ch, out_ch=None, **kw):
            return ResnetBlockBigGAN(in_ch, out_ch, temb_dim=temb_dim, dropout=cfg.dropout, **kw)

        modules: list[nn.Module] = [
            nn.Linear(nf, temb_dim),
            nn.Linear(temb_dim, temb_dim),
            _conv(cfg.num_channels, nf, 3),
        ]
        skip_channels, in_ch = [nf], nf
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                modules.append(block(in_ch, nf * mult))
                in_ch = nf * mult
                if resolutions[level] in cfg.attn_resolutions:
                    modules.append(AttnBlockpp(in_ch))
                skip_channels.append(in_ch)
            if level != len(cfg.ch_mult) - 1:
                modules.append(block(in_ch, down=True))
                skip_channels.append(in_ch)
        modules += [block(in_ch), AttnBlockpp(in_ch), block(in_ch)]
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                out_ch = nf * cfg.ch_mult[level]
                modules.append(block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if resolutions[level] in cfg.attn_resolutions:
                modules.append(AttnBlockpp(in_ch))
            if level != 0:
                modules.append(block(in_ch, up=True))
        modules += [_norm(in_ch), _conv(in_ch, cfg.num_channels, 3)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg, modules = self.model_config, iter(self.all_modules)
        temb = positional_embedding(t, cfg.nf).to(x.dtype)
        temb = next(modules)(temb)
        temb = next(modules)(F.silu(temb))
        skips = [next(modules)(x)]
        for level in range(len(cfg.ch_mult)):
            for _ in range(cfg.num_res_blocks):
                h = next(modules)(skips[-1], temb)
                if h.shape[-1] in cfg.attn_resolutions:
                    h = next(modules)(h)
                skips.append(h)
            if level != len(cfg.ch_mult) - 1:
                skips.append(next(modules)(skips[-1], temb))
        h = skips[-1]
        h = next(modules)(h, temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, skips.pop()], dim=1), temb)
            if h.shape[-1] in cfg.attn_resolutions:
                h = next(modules)(h)
            if level != 0:
                h = next(modules)(h, temb)
        h = F.silu(next(modules)(h))
        return next(modules)(h)
