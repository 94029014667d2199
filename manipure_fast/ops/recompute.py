"""Backward by recomputation: autograd through the reference purifier, from the inputs an op saved.

Both backends use it for ``mani_noise`` on the planes their fused backward kernels do not cover
(the streamed and large-plane paths). MANI runs once per round, not per step, so this is a small
part of an attack's backward. It must run in an autograd formula, not inside a custom op's body,
which autograd does not record.
"""

from __future__ import annotations

import torch


def mani_backward(grad, x, noise, noise_grad: bool, t: int, **options):
    """The gradients of ``reference.mani_noise(x, t, noise, **options)`` for x and, when
    ``noise_grad``, the noise: ``(g_x, g_noise or None)``."""
    from ..reference.mani import mani_noise as reference_mani_noise

    with torch.enable_grad():
        x_in = x.detach().requires_grad_()
        z_in = noise.detach().requires_grad_(noise_grad)
        out = reference_mani_noise(x_in, t, z_in, **options)
        grads = torch.autograd.grad(out, (x_in, z_in) if noise_grad else (x_in,), grad)
    return grads[0], (grads[1] if noise_grad else None)
