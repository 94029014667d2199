"""Train the bundled epsilon-prediction UNet on Fashion-MNIST (SPEC schedule: linear beta from
1e-4 to 2e-2 over 1000 steps).

Only timesteps below ``max_train_timestep`` are sampled: the bundled presets never re-noise past
it, so capacity spent on larger t would be wasted on a small CPU-trained model. An EMA of the
weights (decay 0.999) is what is saved. Checkpoints are written every ``save_every`` steps as
safetensors plus a JSON sidecar holding the config, seed, step count and wall time.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.fashion_mnist import load_fashion_mnist
from ..models.diffusers_unet import FASHION_UNET_CONFIG, build_unet


def linear_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def train_diffusion(
    out: Path,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_train_timestep: int = 300,
    seed: int = 0,
    save_every: int = 250,
    threads: int | None = None,
    data_root: str | None = None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, _ = load_fashion_mnist("train", data_root)
    images = images * 2 - 1  # diffusion range
    unet = build_unet(FASHION_UNET_CONFIG).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200))
    abar = linear_alphas_cumprod()
    generator = torch.Generator().manual_seed(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    running = None
    for step in range(1, steps + 1):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x0 = images[index]
        if torch.rand((), generator=generator) < 0.5:  # horizontal flip augmentation
            x0 = x0.flip(-1)
        t = torch.randint(0, max_train_timestep, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {running:.4f} elapsed {time.time() - started:.0f}s", flush=True)
        if step % save_every == 0 or step == steps:
            _save(
                ema,
                out,
                dict(
                    unet_config=FASHION_UNET_CONFIG,
                    kind="fashion-mnist eps UNet (EMA weights)",
                    seed=seed,
                    steps=step,
                    batch_size=batch_size,
                    lr=lr,
                    max_train_timestep=max_train_timestep,
                    ema_decay=0.999,
                    wall_time_s=round(time.time() - started, 1),
                    threads=torch.get_num_threads(),
                    torch=torch.__version__,
                    final_loss_ema=round(running, 5),
                    schedule="linear beta 1e-4..2e-2, 1000 steps, epsilon prediction",
                ),
            )


def _save(model: torch.nn.Module, out: Path, meta: dict) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
