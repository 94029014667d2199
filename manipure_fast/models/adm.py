"""The guided-diffusion ADM UNet (unconditional ImageNet 256x256, learned sigma, 552.8 M
parameters), written from the published description and the parameter manifest in
``shared/fixtures`` (SPEC §4). State-dict keys are the original's, so a plain
``256x256_diffusion_uncond.pt`` loads strictly.

Supported: scale-shift norm or additive time conditioning, res-block up/down or plain
resampling, attention with ``num_head_channels`` or ``num_heads`` in the legacy qkv order,
no class conditioning. Attention runs through ``scaled_dot_product_attention``; GroupNorm
computes in float32. ``x: [B, 3, H, W]`` in [-1, 1], ``t: [B]`` float timesteps, passed raw as
the reference passes them -> ``[B, 6, H, W]`` (eps, then the variance channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .ddpmpp import GroupNorm32

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclass(frozen=True)
class ADMConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.0

    @classmethod
    def from_guided_diffusion(cls, model_config: dict) -> ADMConfig:
        """From the merged dict passed to guided-diffusion's ``create_model_and_diffusion``."""
        for key in ("class_cond", "use_new_attention_order", "use_fp16"):
            if model_config.get(key, False):
                raise ValueError(f"unsupported guided-diffusion option {key}=True")
        size = int(model_config["image_size"])
        mult = model_config.get("channel_mult", "")
        if mult:
            channel_mult = tuple(float(v) if "." in v else int(v) for v in str(mult).split(","))
        elif size in DEFAULT_CHANNEL_MULT:
            channel_mult = DEFAULT_CHANNEL_MULT[size]
        else:
            raise ValueError(f"image_size {size} has no default channel_mult; give one")
        attention_ds = tuple(size // int(r) for r in str(model_config["attention_resolutions"]).split(","))
        return cls(
            image_size=size,
            model_channels=int(model_config["num_channels"]),
            out_channels=6 if model_config.get("learn_sigma", False) else 3,
            num_res_blocks=int(model_config["num_res_blocks"]),
            attention_ds=attention_ds,
            channel_mult=channel_mult,
            num_heads=int(model_config.get("num_heads", 4)),
            num_head_channels=int(model_config.get("num_head_channels", -1)),
            num_heads_upsample=int(model_config.get("num_heads_upsample", -1)),
            use_scale_shift_norm=bool(model_config.get("use_scale_shift_norm", True)),
            resblock_updown=bool(model_config.get("resblock_updown", False)),
            dropout=float(model_config.get("dropout", 0.0)),
        )


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """guided-diffusion's embedding: ``[cos(t w), sin(t w)]``, ``w_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if hasattr(self, "op") else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.use_scale_shift_norm = use_scale_shift_norm

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention with the legacy qkv layout: the 3C qkv channels are split per
    head first, then into q, k, v (``[heads, 3, ch]`` order)."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length, heads = flat.shape[-1], self.num_heads
        q, k, v = qkv.reshape(b, heads, 3 * (c // heads), length).transpose(-1, -2).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)  # [b, heads, L, ch]; scale 1/sqrt(ch)
        h = self.proj_out(attended.transpose(-1, -2).reshape(b, c, length))
        return (flat + h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet. ``forward(x, t) -> [B, out_channels, H, W]``."""

    def __init__(self, config: ADMConfig | None = None):
        super().__init__()
        cfg = self.model_config = config or ADMConfig()
        self.in_channels = cfg.in_channels
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(ch, out=None, **kw):
            return ResBlock(ch, emb_dim, cfg.dropout, out, cfg.use_scale_shift_norm, **kw)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = input_ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skip_channels, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            res(ch), AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels), res(ch)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, heads_up, cfg.num_head_channels))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_config.model_channels).to(x.dtype))
        skips, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
