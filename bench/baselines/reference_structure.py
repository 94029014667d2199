"""A purifier shaped like the reference purifier (SPEC §2.4), written from the SPEC. It is the
baseline end-to-end speedups are quoted against, so it keeps every cost the SPEC lists:

- two separate model calls per reverse step;
- a Python loop over images and, inside it, over channels, with single-plane 2-D FFTs;
- both radial masks rebuilt with numpy on every call and copied to the device;
- boolean-mask indexing for the exchange and the (no-op) phase clip, a device sync each;
- every reconstructed image written into a CPU tensor, copied back to the device as a batch;
- the cumulative products and timestep tensors rebuilt on the host every step.

Given the same noise it computes what ``manipure_fast.reference.purify_diffusion`` computes
(tested), for the reference purifier's own options: replace phase mode, abs reconstruction,
renoised reference. Odd sizes use the library's centred grid so that the two agree everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from manipure_fast.config import PurifierConfig
from manipure_fast.noise import NoiseSource
from manipure_fast.reference.sampler import renoise


class ReferenceStructurePurifier:
    def __init__(self, eps_model, config: PurifierConfig):
        options = (config.exchange, config.phase_mode, config.reconstruct, config.reference)
        if options != (True, "replace", "abs", "renoised"):
            raise ValueError(
                "the reference-structure baseline implements only the reference "
                "purifier's options: phase_mode='replace', reconstruct='abs', "
                "reference='renoised'"
            )
        self.eps_model = eps_model
        self.config = config
        betas = np.linspace(1e-4, 2e-2, 1000, dtype=np.float64)
        self.betas = torch.from_numpy(betas).float()

    # -- schedule, rebuilt every call as the reference does ------------------------------------
    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        beta = torch.cat([torch.zeros(1), self.betas]).to(t.device)
        return (1 - beta).cumprod(dim=0).index_select(0, t.long() + 1).view(-1, 1, 1, 1)

    def _model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_model(x, t)[:, : x.shape[1]]

    # -- the exchange, per image and per channel ------------------------------------------------
    def _mask(self, rows: int, cols: int, cut: float, device) -> torch.Tensor:
        u = np.fft.fftshift(
            np.where(np.arange(cols) <= (cols - 1) // 2, np.arange(cols), np.arange(cols) - cols)
        )
        v = np.fft.fftshift(
            np.where(np.arange(rows) <= (rows - 1) // 2, np.arange(rows), np.arange(rows) - rows)
        )
        uu, vv = np.meshgrid(u, v)
        return torch.from_numpy(np.sqrt(uu**2 + vv**2) <= cut).to(device)

    def _exchange(self, x_ref0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        ref = torch.clip(torch.clamp(x_ref0 / 2 + 0.5, 0, 1) * 255, 0, 255)
        cur = torch.clip(torch.clamp(x0 / 2 + 0.5, 0, 1) * 255, 0, 255)
        batch, channels, rows, cols = cur.shape
        out = torch.zeros(batch, rows, cols, channels)  # CPU buffer, as the reference
        for b in range(batch):
            planes = []
            for c in range(channels):
                f_ref = torch.fft.fftshift(torch.fft.fft2(ref[b, c]))
                f_cur = torch.fft.fftshift(torch.fft.fft2(cur[b, c]))
                amp_ref, amp = f_ref.abs(), f_cur.abs()
                ph_ref, ph = f_ref.angle() + torch.pi, f_cur.angle() + torch.pi
                amp_mask = self._mask(rows, cols, cfg.amplitude_cut_range, cur.device)
                amp = torch.where(amp_mask, amp_ref, amp)
                ph_mask = self._mask(rows, cols, cfg.phase_cut_range, cur.device)
                ph = torch.where(ph_mask, ph_ref, ph)
                ph[ph_mask] = torch.clip(
                    ph[ph_mask], ph_ref[ph_mask] - cfg.delta, ph_ref[ph_mask] + cfg.delta
                )
                spectrum = amp * torch.exp(1j * (ph - torch.pi))
                plane = torch.fft.ifft2(torch.fft.ifftshift(spectrum)).abs()
                planes.append(torch.clip(plane, 0, 255) / 255)
            out[b] = torch.stack(planes, dim=2).cpu()
        out = out.permute(0, 3, 1, 2).to(x0.device)
        return torch.clamp((out - 0.5) * 2, -1, 1)

    # -- the loop -------------------------------------------------------------------------------
    def _denoise(self, x_in, x, seq, noise: NoiseSource):
        n = x.shape[0]
        seq_next = [-1] + list(seq[:-1])
        t_f = self.config.forward_noise_steps
        for i, j in zip(reversed(seq), reversed(seq_next)):
            t = (torch.ones(n) * i).to(x.device)
            at = self._alpha(t)
            at_next = self._alpha((torch.ones(n) * j).to(x.device))
            et = self._model(x, t)
            x0 = (x - et * (1 - at).sqrt()) / at.sqrt()
            a_f = (1 - self.betas.to(x.device)).cumprod(dim=0)[t_f]
            xr = x_in * a_f.sqrt() + noise.draw("reference_renoise", x_in) * (1.0 - a_f).sqrt()
            tf = (torch.ones(n) * t_f).to(x.device)
            af = self._alpha(tf)
            x_ref0 = (xr - self._model(xr, tf) * (1 - af).sqrt()) / af.sqrt()
            x0 = self._exchange(x_ref0, x0)
            c1 = self.config.eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
            c2 = ((1 - at_next) - c1**2).clamp_min(0).sqrt()
            x = at_next.sqrt() * x0 + c1 * noise.draw("ddpm_update_noise", x) + c2 * et
        return x

    def purify_diffusion(self, x_diff: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        """x_diff: ``[B, C, H, W]`` in [-1, 1]."""
        for round_ in self.config.rounds:
            x_t = renoise(x_diff, round_.renoise_t, noise.draw("round_renoise", x_diff), self.config)
            x_diff = self._denoise(x_diff, x_t, round_.timesteps, noise)
        return x_diff
