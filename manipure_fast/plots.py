"""The demo's pictures (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import torch

from .reference import band_mean_magnitudes, band_weights, intensity_map


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_demo_grid(
    path: Path, clean: torch.Tensor, adversarial: dict, purified: dict, columns: int = 8
) -> None:
    """Rows: clean; then per method, the adversarial examples against it and their purification."""
    plt = _plt()
    rows = [("clean", clean)]
    for method in adversarial:
        rows += [(f"adv vs {method}", adversarial[method]), (f"{method}(adv)", purified[method])]
    n = min(columns, clean.shape[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.5, 1.3 * len(rows)))
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = images[c].detach().float().cpu()
            ax.imshow(
                (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectrum(path: Path, clean: torch.Tensor, adversarial: torch.Tensor) -> None:
    """Band mean magnitudes M_i and band weights w_i (batch means, log scale) and the intensity
    map W of the first image, for clean and adversarial inputs (diffusion range)."""
    plt = _plt()
    clean_d, adv_d = (v.detach().float().cpu() * 2 - 1 for v in (clean, adversarial))
    m_clean, m_adv = band_mean_magnitudes(clean_d), band_mean_magnitudes(adv_d)
    w_clean, w_adv = band_weights(m_clean), band_weights(m_adv)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    bands = range(m_clean.shape[-1])
    for ax, (clean_v, adv_v, title) in zip(
        axes[:2], ((m_clean, m_adv, "band mean magnitude $M_i$"), (w_clean, w_adv, "band weight $w_i$"))
    ):
        ax.semilogy(list(bands), clean_v.mean(dim=(0, 1)).numpy(), "o-", label="clean")
        ax.semilogy(list(bands), adv_v.mean(dim=(0, 1)).numpy(), "s--", label="adversarial")
        ax.set_xlabel("band (low -> high frequency)")
        ax.set_title(title)
        ax.legend()
    for ax, image, title in ((axes[2], clean_d[:1], "W (clean)"), (axes[3], adv_d[:1], "W (adversarial)")):
        shown = ax.imshow(intensity_map(image)[0, 0].numpy(), cmap="magma")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
