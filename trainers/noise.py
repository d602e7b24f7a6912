"""Noise schedule and diffusion-time sampling, shared by the diffusion families (REFERENCE §1).

Log-linear schedule: alpha_t = alpha_0 * (1 - (1 - eps) t), eps = 1e-3 (the MDLM/Duo/Eso-LM code,
after SEDD), so alpha_1 = alpha_0 * eps: at t = 1 a token is still clean with probability 1e-3 and
sigma = -log alpha_t stays finite. The derivative is the constant alpha'_t = -alpha_0 (1 - eps).

The masked-diffusion NELBO weight -alpha'_t / (1 - alpha_t) = alpha_0 (1 - eps) / (1 - alpha_t)
reduces to exactly 1/t for alpha_0 = 1 (1 - alpha_t = (1 - eps) t), the "1/t" of REFERENCE §1.

Training times are stratified over the global batch ("antithetic" in the MDLM code): one u ~ U(0, 1)
for the whole global batch, t_i = ((u + i)/n mod 1)(1 - 1e-3) + 1e-3, and each rank takes its slice.
Every rank must therefore draw u from a generator in the same state (seeded identically).
"""

from __future__ import annotations

import torch

EPS = 1e-3  # schedule floor: alpha_1 = alpha_0 * EPS (SEDD / MDLM `LogLinear`)
T_MIN = 1e-3  # smallest sampled time (MDLM `training.sampling_eps`)


def alpha(t: torch.Tensor, alpha_0: float = 1.0) -> torch.Tensor:
    """Probability that a token is still clean at time t."""
    return alpha_0 * (1.0 - (1.0 - EPS) * t)


def alpha_derivative(t: torch.Tensor, alpha_0: float = 1.0) -> torch.Tensor:
    """d alpha_t / dt, a constant for the log-linear schedule (shaped like t)."""
    return torch.full_like(t, -alpha_0 * (1.0 - EPS))


def sigma_from_alpha(alpha_t: torch.Tensor) -> torch.Tensor:
    """The time-conditioning input sigma = -log alpha_t."""
    return -torch.log(alpha_t)


def masked_nelbo_weight(t: torch.Tensor, alpha_0: float = 1.0) -> torch.Tensor:
    """-alpha'_t / (1 - alpha_t), the weight of a masked token's cross-entropy in the NELBO (= 1/t
    for alpha_0 = 1)."""
    return alpha_0 * (1.0 - EPS) / (1.0 - alpha(t, alpha_0))


def _stratify(u: torch.Tensor, n: int) -> torch.Tensor:
    offsets = torch.arange(n, dtype=torch.float64, device=u.device)
    strata = torch.remainder((u.double() + offsets) / n, 1.0)
    return (strata * (1.0 - T_MIN) + T_MIN).float()


def sample_stratified_times(n_global: int, start: int, count: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """FloatTensor[count]: slice [start, start + count) of the global batch's stratified times."""
    if start < 0 or count < 0 or start + count > n_global:
        raise ValueError(f"slice [{start}, {start + count}) outside the global batch of {n_global}")
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(1, generator=generator, device=device)
    return _stratify(u, n_global)[start:start + count]


def fixed_validation_times(n: int, seed: int) -> torch.Tensor:
    """FloatTensor[n] stratified times, a deterministic function of (n, seed)."""
    generator = torch.Generator().manual_seed(seed)
    return _stratify(torch.rand(1, generator=generator), n)
