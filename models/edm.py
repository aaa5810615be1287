"""EDM noise schedule, preconditioning wrapper and mel normalisation (Karras et al. 2022).

``D(x, sigma, cond) = c_skip * x + c_out * F(c_in * x, c_noise, cond)`` with ``F`` the backbone.
The plain EDM coefficients serve the teacher; the consistency ones (Song et al. 2023, Appendix C)
make ``D(x, sigma_min) == x`` exactly (the boundary condition) for the student and target.
The boundary condition lives here only: the backbone never sees sigma.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comostream.models.backbone import Backbone
from comostream.models.config import EDMConfig
from comostream.models.streaming import Delay, StreamingStack, StreamState, child, per_item

__all__ = ["EDMPrecond", "karras_sigmas", "normalise_mel", "denormalise_mel", "sigma_like"]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """``n`` noise levels, descending from ``sigma_max`` to ``sigma_min`` (Karras eq. 5), float64.

    ``sigma_i = (max^(1/rho) + i/(n-1) * (min^(1/rho) - max^(1/rho)))^rho``; ``n = 1`` gives
    ``[sigma_max]``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max  # exact endpoints despite the power round trip
    if n > 1:
        sigmas[-1] = sigma_min
    return sigmas


def normalise_mel(mel: Tensor, cfg: EDMConfig) -> Tensor:
    """Log-mel (natural log) -> the model's space: ``(mel - mean) / std * sigma_data``."""
    return (mel - cfg.mel_mean) * (cfg.sigma_data / cfg.mel_std)


def denormalise_mel(x: Tensor, cfg: EDMConfig) -> Tensor:
    """Inverse of :func:`normalise_mel`."""
    return x * (cfg.mel_std / cfg.sigma_data) + cfg.mel_mean


def sigma_like(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` (scalar, ``(B,)`` or per frame ``(B, 1, T)``) as ``(B, 1, 1)`` or ``(B, 1, T)``."""
    return per_item(sigma, x, "sigma")


class EDMPrecond(StreamingStack):
    """The denoiser ``D(x (B, n_mels, T), sigma, cond (B, Cg, T)) -> (B, n_mels, T)``.

    ``consistency=False``: EDM ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s*sd/sqrt(s^2+sd^2)``.
    ``consistency=True``: ``c_skip = sd^2/((s-s_min)^2+sd^2)``, ``c_out = (s-s_min)*sd/
    sqrt(sd^2+s^2)``. Both: ``c_in = 1/sqrt(s^2+sd^2)``, ``c_noise = ln(s)/4``.
    Streaming (``init_state``/``step``/``flush``) takes one sigma per stream (scalar or ``(B,)``).
    """

    def __init__(self, backbone: Backbone, cfg: EDMConfig, consistency: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.sigma_min = cfg.sigma_min
        self.sigma_data = cfg.sigma_data
        self.consistency = consistency
        self.lookahead_frames: int = backbone.lookahead_frames
        self.left_frames: int = backbone.left_frames
        self.skip_delay = Delay(backbone.n_mels, backbone.lookahead_frames)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)``, each shaped like ``sigma``."""
        sd2 = self.sigma_data**2
        if self.consistency:
            shifted = sigma - self.sigma_min
            c_skip = sd2 / (shifted**2 + sd2)
            c_out = shifted * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        else:
            c_skip = sd2 / (sigma**2 + sd2)
            c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(sigma**2 + sd2)
        return c_skip, c_out, c_in, torch.log(sigma) / 4.0

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
        """One-shot, aligned; ``sigma`` scalar, ``(B,)`` or ``(B, 1, T)``."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma_like(sigma, x))
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, cond)

    def step(
        self, x: Tensor, sigma: Tensor | float, cond: Tensor, state: StreamState
    ) -> tuple[Tensor, StreamState]:
        """``x (B, n_mels, k)``, ``cond (B, Cg, k)`` -> ``D (B, n_mels, k)``, ``lookahead`` late."""
        s = sigma_like(sigma, x)
        if s.shape[-1] != 1:
            raise ValueError("streaming takes one sigma per stream: a scalar or (B,)")
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        out = self.backbone.run(c_in * x, c_noise, cond, child(state, "backbone"))
        return c_skip * self.skip_delay.run(x, child(state, "skip_delay")) + c_out * out, state

    def flush(self, sigma: Tensor | float, state: StreamState, batch: int) -> Tensor:
        """The last ``lookahead_frames`` outputs ``(B, n_mels, L)``: feeds zero frames."""
        ref = self.backbone.output.weight
        delay = self.lookahead_frames
        x = ref.new_zeros(batch, self.backbone.n_mels, delay)
        if delay == 0:
            return x
        cond = ref.new_zeros(batch, self.backbone.cond_channels, delay)
        return self.step(x, sigma, cond, state)[0]
