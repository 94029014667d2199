"""White-box attacks on stochastic defenses.

All attacks take ``model(x) -> logits`` for images ``x: [B, C, H, W]`` in [0, 1] and labels
``y: [B]``, and return adversarial images in [0, 1] within the threat model. Gradients are
averaged over ``eot`` fresh draws of the defense's randomness per step (EOT).

- ``pgd_eot``: PGD with Linf or L2 projection and random start. ``lowpass_radius=R`` projects
  every perturbation onto the frequencies with ``r <= R`` (same integer radial grid as the
  exchange), alternating with the eps-ball and image-range projections: the low-frequency
  attack that tests MANI's assumption that adversarial energy sits in the high bands. The
  perturbation is always valid (the last projection is the ball and the range) and nearly
  band-limited (a few percent of its energy outside the disc; tested).
- ``bpda_model``: wraps ``classifier(purify(x))`` so that the backward pass treats the purifier
  as the identity (BPDA), for use with ``pgd_eot``.

Full gradients through the purifier are what ``DefendedClassifier``/``Purifier`` give by
default; pass an attack-surrogate purifier (e.g. one round (T, 1)) for a cheaper but still
exact-gradient attack, and ``checkpoint=True`` to trade compute for memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..reference.grid import disc_mask

Model = Callable[[torch.Tensor], torch.Tensor]


def lowpass(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Orthogonal projection of ``delta: [B, C, H, W]`` onto the frequencies with ``r <= radius``."""
    h, w = delta.shape[-2:]
    return torch.fft.ifft2(torch.fft.fft2(delta) * disc_mask(h, w, radius, delta.device)).real


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * torch.clamp(eps / flat, max=1.0)


def eot_gradient(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eot: int,
    checkpoint: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient of the cross-entropy over ``eot`` draws, and the mean loss per image."""
    grad = torch.zeros_like(x)
    loss_sum = torch.zeros(x.shape[0], device=x.device)
    for _ in range(eot):
        x_in = x.detach().requires_grad_(True)
        logits = activation_checkpoint(model, x_in, use_reentrant=False) if checkpoint else model(x_in)
        loss = F.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), x_in)
        grad += g
        loss_sum += loss.detach()
    return grad / eot, loss_sum / eot


def pgd_eot(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    eot: int = 1,
    norm: str = "linf",
    random_start: bool = True,
    lowpass_radius: float | None = None,
    checkpoint: bool = False,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """PGD-EOT. ``step_size`` defaults to ``2.5 * eps / steps``. ``progress(step)`` is called
    after each step (for progress bars)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0 or eot < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, eot >= 1; got {eps}, {steps}, {eot}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        delta = noise * eps if norm == "linf" else _project(noise * eps, eps, "l2")
    else:
        delta = torch.zeros_like(x)
    delta = _constrain(x, delta, eps, norm, lowpass_radius)
    for step in range(steps):
        grad, _ = eot_gradient(model, x + delta, y, eot, checkpoint)
        if norm == "linf":
            delta = delta + step_size * grad.sign()
        else:
            delta = delta + step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = _constrain(x, delta, eps, norm, lowpass_radius)
        if progress is not None:
            progress(step)
    return (x + delta).detach()


def _constrain(x, delta, eps, norm, lowpass_radius, rounds: int = 20):
    """Project onto the eps ball and the image range; with ``lowpass_radius``, alternate that with
    the projection onto the low-frequency subspace (all three sets are convex and contain 0, so
    alternating projections approach their intersection). The last projection is always the
    ball + range, so the result is a valid perturbation."""
    if lowpass_radius is None:
        return (x + _project(delta, eps, norm)).clamp(0, 1) - x
    for _ in range(rounds):
        delta = (x + _project(lowpass(delta, lowpass_radius), eps, norm)).clamp(0, 1) - x
    return delta


class _Identity(torch.autograd.Function):
    """Forward: the purified image; backward: the gradient passes to the input unchanged."""

    @staticmethod
    def forward(ctx, x, purified):
        return purified

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def bpda_model(purify: Callable[[torch.Tensor], torch.Tensor], classifier: Model) -> Model:
    """``classifier(purify(x))`` with the purifier's backward replaced by the identity."""

    def model(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            purified = purify(x)
        return classifier(_Identity.apply(x, purified))

    return model


def build_autoattack_rand(
    model: torch.nn.Module, *, eps: float, norm: str = "Linf", steps: int = 100, eot: int = 20, seed: int = 0
):
    """AutoAttack's "rand" version for stochastic defenses (APGD-CE then APGD-DLR, each with EOT)
    as a torchattacks ``MultiAttack``, with the APGD step count set explicitly (torchattacks'
    ``AutoAttack`` would use 10; the original uses 100)."""
    import torchattacks

    attacks = [
        torchattacks.APGD(
            model, norm=norm, eps=eps, steps=steps, eot_iter=eot, loss=loss, n_restarts=1, seed=seed
        )
        for loss in ("ce", "dlr")
    ]
    return torchattacks.MultiAttack(attacks)


def autoattack_rand(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 20,
    seed: int = 0,
) -> torch.Tensor:
    return build_autoattack_rand(model, eps=eps, norm=norm, steps=steps, eot=eot, seed=seed)(x, y)
