"""MDLM: masked (absorbing-state) diffusion (Sahoo et al. 2024; REFERENCE §1).

Corruption: each token independently becomes [MASK] with probability 1 - alpha_t (log-linear
schedule, trainers/noise.py). Bidirectional attention, no time conditioning (sigma = 0: the model
infers t from the number of masks). SUBS parameterisation: the [MASK] logit is -inf and only masked
positions are scored (clean positions are carried over, so they cost nothing).

Objectives, per sequence of L tokens (the reported numbers are per token: divided by L):
- ``nelbo``: w(t) * sum over masked l of -log p(x^l | x_t), with the exact weight of the schedule
  w(t) = -alpha'_t / (1 - alpha_t) = (1 - eps) / (1 - (1 - eps) t) ... = 1/t exactly (alpha_0 = 1,
  since 1 - alpha_t = (1 - eps) t). t is drawn from U[1e-3, 1], as in the MDLM code, so this
  estimates the continuous-time NELBO with the t < 1e-3 sliver and the t = 1 prior term
  (alpha_1 = 1e-3, not 0) left out: both are O(1e-3) nats per token.
- ``low_var``: the same cross-entropy without the weight (not a bound; the paper's MDLM sweep).
Validation always reports the NELBO.
"""

from __future__ import annotations

import torch

from trainers import kernels, noise
from trainers.families.base import Family
from trainers.families.registry import MDLMOptions, get_entry
from trainers.fused_head import cross_entropy_rows
from trainers.samplers import mdlm as sampler

ENTRY = get_entry("mdlm")


def mask_tokens(tokens: torch.Tensor, alpha_t: torch.Tensor, mask_token_id: int,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, masked): each token -> [MASK] independently with probability 1 - alpha_t ([B])."""
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    masked = u < (1.0 - alpha_t)[:, None]
    return torch.where(masked, mask_token_id, tokens), masked


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor,
                         mask_token_id: int) -> torch.Tensor:
    """FloatTensor[B, L]: -log p(target) under SUBS ([MASK] never predicted) where `scored`, else 0."""
    nats = kernels.cross_entropy_without(logits.flatten(0, 1), targets.flatten(), mask_token_id)
    return torch.where(scored, nats.view_as(targets), 0.0)


def scored_cross_entropy(model, targets: torch.Tensor, scored: torch.Tensor, mask_token_id: int,
                         **model_inputs) -> torch.Tensor:
    """masked_cross_entropy with the model's head run only at the scored positions (`output_rows`):
    clean positions cost nothing under SUBS, and about half the tokens are clean on average, so
    the head matmul and the log-softmax shrink by half. Same numbers, FloatTensor[B, L].
    Under no_grad with the fused head (trainers/fused_head.py) the logits are never whole."""
    if kernels.fused_head_enabled() and not torch.is_grad_enabled():
        return fused_scored_cross_entropy(model, targets, scored, mask_token_id, None, **model_inputs)[1]
    logits = model(**model_inputs, output_rows=scored)  # [n_scored, K]
    nats = kernels.cross_entropy_without(logits, targets[scored], mask_token_id)
    return torch.zeros(targets.shape, dtype=nats.dtype, device=nats.device).masked_scatter(scored, nats)


def fused_scored_cross_entropy(model, targets: torch.Tensor, scored: torch.Tensor, mask_token_id: int,
                               weights: torch.Tensor | float | None,
                               **model_inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over scored positions of weight * nats, differentiable; nats FloatTensor[B, L],
    detached, 0 where not scored), the head and loss fused. weights: FloatTensor[B, L] (read at
    the scored positions), one number, or None (= 1)."""
    if isinstance(weights, torch.Tensor):
        weights = weights[scored]
    out = model(**model_inputs, output_rows=scored,
                head=cross_entropy_rows(targets[scored], mask_token_id, weights))
    nats = torch.zeros(targets.shape, dtype=out.rows.dtype, device=out.rows.device)
    return out.loss, nats.masked_scatter(scored, out.rows)


class MDLMFamily(Family):
    name = ENTRY.name
    attention = ENTRY.attention
    needs_time = True

    def masked_nats(self, model, tokens: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Unweighted -log p(x^l | x_t) at the masked positions, FloatTensor[B, L]."""
        x_t, masked = mask_tokens(tokens, noise.alpha(t), self.mask_token_id, generator)
        return scored_cross_entropy(model, tokens, masked, self.mask_token_id, input_ids=x_t, sigma=None)

    def training_loss(self, model, tokens, t, generator=None):
        t = t.to(tokens.device)
        if kernels.fused_head_enabled():
            B, L = tokens.shape
            weights = 1.0 / (B * L)
            if self.options.objective == "nelbo":
                weights = (noise.masked_nelbo_weight(t) * weights)[:, None].expand(B, L)
            x_t, masked = mask_tokens(tokens, noise.alpha(t), self.mask_token_id, generator)
            return fused_scored_cross_entropy(model, tokens, masked, self.mask_token_id, weights,
                                              input_ids=x_t, sigma=None)[0]
        nats = self.masked_nats(model, tokens, t, generator).sum(1)
        if self.options.objective == "nelbo":
            nats = nats * noise.masked_nelbo_weight(t)
        return nats.mean() / tokens.shape[1]

    def validation_nats(self, model, tokens, t, generator=None):
        t = t.to(tokens.device)
        nats = self.masked_nats(model, tokens, t, generator).sum(1) * noise.masked_nelbo_weight(t)
        return nats, tokens.shape[1]

    def sample(self, model, n_samples, seq_len, n_steps, generator, **kwargs):
        """trainers/samplers/mdlm.py; kwargs: use_cache (reuse the last prediction when no token
        changed; default True), top_p, bos_token_id."""
        with torch.no_grad():
            return sampler.sample(model, n_samples, seq_len, n_steps, generator,
                                  mask_token_id=self.mask_token_id, vocab_size=self.vocab_size, **kwargs)


def build(options, *, vocab_size: int, mask_token_id: int) -> MDLMFamily:
    if not isinstance(options, MDLMOptions):
        options = ENTRY.parse_options(dict(options or {}))
    return MDLMFamily(options, vocab_size=vocab_size, mask_token_id=mask_token_id)
