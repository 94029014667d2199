"""Quality check of the bundled denoiser: classifier accuracy on test images noised to timestep t
and denoised in one step (the x0 prediction), against the accuracy on the noisy images themselves.

    python -m manipure_fast.evaluation.quality [--n-images 1000] [--out docs/results/diffusion_quality.md]

A denoiser that has learned the data keeps accuracy close to the clean accuracy at the timesteps
the presets visit; the noisy-image accuracy shows how much the noise alone destroys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..reference.schedule import noise_coefficients

TIMESTEPS = (50, 100, 200, 300)


@torch.no_grad()
def one_step_accuracy(unet, classifier, images, labels, timesteps=TIMESTEPS, batch=250, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rows = {"clean": 0}
    for t in timesteps:
        rows[f"noisy t={t}"] = 0
        rows[f"denoised t={t}"] = 0
    for i in range(0, images.shape[0], batch):
        x, y = images[i : i + batch], labels[i : i + batch]
        rows["clean"] += int((classifier(x).argmax(1) == y).sum())
        x_diff = x * 2 - 1
        for t in timesteps:
            c = noise_coefficients(t)
            x_t = c.signal * x_diff + c.noise * torch.randn(x.shape, generator=gen)
            eps = unet(x_t, torch.full((x.shape[0],), float(t)))
            x0 = ((x_t - c.noise * eps) / c.signal).clamp(-1, 1)
            rows[f"noisy t={t}"] += int((classifier(((x_t + 1) / 2).clamp(0, 1)).argmax(1) == y).sum())
            rows[f"denoised t={t}"] += int((classifier((x0 + 1) / 2).argmax(1) == y).sum())
    return {k: v / images.shape[0] for k, v in rows.items()}


def main(argv=None) -> None:
    from ..data.bundled import load_bundled_subset
    from ..models.bundled import bundled_metadata, load_bundled_classifier, load_bundled_unet

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    images, labels = load_bundled_subset()
    images, labels = images[: args.n_images], labels[: args.n_images]
    accuracy = one_step_accuracy(load_bundled_unet(), load_bundled_classifier(), images, labels)
    meta = bundled_metadata()
    lines = [
        "# Quality check of the bundled denoiser",
        "",
        f"Classifier accuracy on {images.shape[0]} bundled Fashion-MNIST test images (100 per class), "
        "noised to timestep t with the SPEC schedule and denoised in one step (x0 prediction, clamped).",
        "",
        f"Denoiser: {meta.get('fashion_unet', {}).get('steps')} training steps "
        f"(t < {meta.get('fashion_unet', {}).get('max_train_timestep')}), "
        f"{meta.get('fashion_unet', {}).get('wall_time_s')} s on the CPU. Classifier test accuracy "
        f"(10k images): {meta.get('fashion_classifier', {}).get('test_accuracy')}.",
        "",
        "| input | accuracy |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in accuracy.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
