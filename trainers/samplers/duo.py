"""Duo sampler: ancestral steps of the uniform-state reverse process (Sahoo et al. 2025, after UDLM).

Start from uniform noise over the K = vocab_size - 1 real tokens ([MASK] is not a state of a
uniform-state chain; position 0 = `bos_token_id` when given, clamped at every step). T steps on
t = linspace(1, SAMPLING_EPS, T + 1); from t to s every token is redrawn from the approximate
posterior q(x_s | x_t, x_theta) (`duo_posterior`), with x_theta = softmax of the model's logits
([MASK] forbidden), the model conditioned on sigma = -log alpha_t.

x_theta is the model's prediction, as in the public Duo code: not the exact E[x_0 | x_t] (the
optimal denoiser of the uniform-state NELBO plugs in p(x_0^l | x_t with token l left out)), but the
same plug-in the Duo sampler uses.

Final step from SAMPLING_EPS to 0 (`final_step`): "ancestral" draws from the posterior with
alpha_s = 1, i.e. proportional to x_theta (.) (alpha_t K e_{x_t} + 1 - alpha_t); "greedy" takes the
argmax of x_theta (the Duo code's `noise_removal` options). Every token can change at every step
and the model is time-conditioned, so nothing can be cached: `use_cache` is accepted for a uniform
signature and changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers import noise
from trainers.samplers.common import (SAMPLING_EPS, check_arguments, gumbel_argmax, model_device,
                                      model_log_probs, start_with, time_grid, uniform_real_tokens)

CACHE_MODES = (False,)
USES_STEPS = True
FINAL_STEPS = ("ancestral", "greedy")


def duo_posterior(x_theta: torch.Tensor, xt: torch.Tensor, alpha_s, alpha_t,
                  mask_token_id: int) -> torch.Tensor:
    """q(x_s | x_t) [..., V] with x_0 replaced by x_theta (Duo `_compute_posterior`):

        [alpha_t K x (.) e_{x_t} + (alpha_{t|s} - alpha_t) e_{x_t} + (alpha_s - alpha_t) x
         + (1 - alpha_{t|s})(1 - alpha_s) / K] / (alpha_t K x[x_t] + 1 - alpha_t),

    alpha_{t|s} = alpha_t / alpha_s. x_theta: [..., V] probabilities, 0 at the [MASK] column; the
    uniform term covers the K = V - 1 real tokens only, so [MASK] keeps probability 0 and each row
    sums to one. alpha_s, alpha_t: floats or tensors broadcastable to x_theta."""
    V = x_theta.shape[-1]
    K = V - 1
    uniform = torch.full((V,), 1.0 / K, dtype=x_theta.dtype, device=x_theta.device)
    uniform[mask_token_id] = 0.0
    alpha_ts = alpha_t / alpha_s
    e_xt = F.one_hot(xt, V).to(x_theta.dtype)
    numerator = ((alpha_t * K) * x_theta * e_xt + (alpha_ts - alpha_t) * e_xt
                 + (alpha_s - alpha_t) * x_theta + ((1.0 - alpha_ts) * (1.0 - alpha_s)) * uniform)
    x_theta_xt = x_theta.gather(-1, xt[..., None])
    return numerator / ((alpha_t * K) * x_theta_xt + (1.0 - alpha_t))


def sample(model, n_samples: int, seq_len: int, n_steps: int, generator: torch.Generator, *,
           mask_token_id: int, vocab_size: int, use_cache: bool = False, top_p: float = 1.0,
           bos_token_id: int | None = None, final_step: str = "ancestral") -> torch.Tensor:
    check_arguments(n_samples, seq_len, n_steps, top_p)
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step={final_step!r}; choose one of {FINAL_STEPS}")
    device = model_device(model)
    x = uniform_real_tokens((n_samples, seq_len), vocab_size, mask_token_id, generator, device)
    n_prompt = start_with(x, bos_token_id)
    alphas = noise.alpha(time_grid(n_steps, SAMPLING_EPS, device)).float()

    def predict(alpha_t):
        sigma = noise.sigma_from_alpha(alpha_t).expand(n_samples)
        return model_log_probs(model(input_ids=x, sigma=sigma), mask_token_id, top_p).exp()

    for i in range(n_steps):
        alpha_t, alpha_s = alphas[i], alphas[i + 1]
        q = duo_posterior(predict(alpha_t), x, alpha_s, alpha_t, mask_token_id)
        x = _keep_prompt(gumbel_argmax(q.clamp_min(0.0).log(), generator), x, n_prompt)
    x_theta = predict(alphas[-1])
    if final_step == "greedy":
        new = x_theta.argmax(dim=-1)
    else:
        new = gumbel_argmax(duo_posterior(x_theta, x, 1.0, alphas[-1], mask_token_id).clamp_min(0.0).log(),
                            generator)
    return _keep_prompt(new, x, n_prompt)


def _keep_prompt(new: torch.Tensor, old: torch.Tensor, n_prompt: int) -> torch.Tensor:
    new[:, :n_prompt] = old[:, :n_prompt]
    return new
