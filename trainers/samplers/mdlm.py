"""MDLM sampler: ancestral steps of the absorbing-state reverse process (Sahoo et al. 2024).

Start from all [MASK] (position 0 = `bos_token_id` when given). T steps on the grid
t = linspace(1, SAMPLING_EPS, T + 1); from t to s, each masked token unmasks with probability
(alpha_s - alpha_t) / (1 - alpha_t) to a draw of p_theta(x^l | x_t), and clean tokens are copied
(SUBS: the true reverse process never changes a clean token). A final noise-removal step then sets
any token still masked to the argmax of p_theta (MDLM `_sample`, `noise_removal`).

The speed trick (MDLM's `_ddpm_caching_update`): MDLM is not time-conditioned, so when a step
changed no token the model's last prediction is still exact and the model call is skipped; with
T >> L most steps change nothing, and a batch of B sequences costs at most min(T, B L) + 1 calls
(L + 1 for one sequence) however large T is.
`use_cache=False` calls the model at every step; it draws the same noise, so the samples are
identical and only the time differs.
"""

from __future__ import annotations

import torch

from trainers import noise
from trainers.samplers.common import (SAMPLING_EPS, check_arguments, gumbel_argmax, model_device,
                                      model_log_probs, start_with, time_grid)

CACHE_MODES = (True, False)
USES_STEPS = True


def unmask_probability(alpha_s: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """P(a token masked at t is clean at s) = (alpha_s - alpha_t) / (1 - alpha_t)."""
    return (alpha_s - alpha_t) / (1.0 - alpha_t)


def sample(model, n_samples: int, seq_len: int, n_steps: int, generator: torch.Generator, *,
           mask_token_id: int, vocab_size: int, use_cache: bool = True, top_p: float = 1.0,
           bos_token_id: int | None = None) -> torch.Tensor:
    check_arguments(n_samples, seq_len, n_steps, top_p)
    device = model_device(model)
    x = torch.full((n_samples, seq_len), mask_token_id, dtype=torch.long, device=device)
    start_with(x, bos_token_id)
    alphas = noise.alpha(time_grid(n_steps, SAMPLING_EPS, device))

    def predict():
        return model_log_probs(model(input_ids=x, sigma=None), mask_token_id, top_p)

    log_p = None  # the last prediction; None when x changed since (or when not reusing)
    for i in range(n_steps):
        if log_p is None:
            log_p = predict()
        u = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64)
        reveal = (x == mask_token_id) & (u < unmask_probability(alphas[i + 1], alphas[i]))
        if reveal.any():
            x[reveal] = gumbel_argmax(log_p[reveal], generator)
            log_p = None
        elif not use_cache:
            log_p = None
    masked = x == mask_token_id
    if masked.any():  # noise removal: the last masks take p_theta's most likely token
        log_p = predict() if log_p is None else log_p
        x[masked] = log_p[masked].argmax(dim=-1)
    return x
