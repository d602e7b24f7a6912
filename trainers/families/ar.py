"""AR: the autoregressive baseline (REFERENCE §1).

Causal attention, next-token cross-entropy on x[:, :-1] -> x[:, 1:]. The backbone's time input is
fed sigma = 0, so AR has the diffusion families' parameters and FLOPs. The [MASK] logit is -inf
(as in the public code), so the NLL is over the real tokens. Validation is the exact NLL: L - 1
scored tokens per sequence; the diffusion time t is ignored.
"""

from __future__ import annotations

import torch

from trainers import kernels
from trainers.families.base import Family
from trainers.families.registry import AROptions, get_entry
from trainers.fused_head import HeadOutput, cross_entropy_rows
from trainers.samplers import ar as sampler

ENTRY = get_entry("ar")


class ARFamily(Family):
    name = ENTRY.name
    attention = ENTRY.attention
    needs_time = False

    def token_nats(self, model, tokens: torch.Tensor) -> torch.Tensor:
        """-log p(x_{l+1} | x_{<=l}), FloatTensor[B, L - 1] (detached with the fused head)."""
        if kernels.fused_head_enabled() and not torch.is_grad_enabled():
            return self.fused_nats(model, tokens, None).rows.view(tokens.shape[0], -1)
        logits = model(input_ids=tokens[:, :-1], sigma=None)
        nats = kernels.cross_entropy_without(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                             self.mask_token_id)
        return nats.view(tokens.shape[0], -1)

    def fused_nats(self, model, tokens: torch.Tensor, weights: float | None) -> HeadOutput:
        """The NLL with the head and loss fused (trainers/fused_head.py): the weighted sum over
        scored tokens and the nats per token, row-major over [B, L - 1]."""
        targets = tokens[:, 1:].flatten()
        return model(input_ids=tokens[:, :-1], sigma=None,
                     head=cross_entropy_rows(targets, self.mask_token_id, weights))

    def training_loss(self, model, tokens, t=None, generator=None):
        if kernels.fused_head_enabled():
            return self.fused_nats(model, tokens, 1.0 / (tokens.shape[0] * (tokens.shape[1] - 1))).loss
        return self.token_nats(model, tokens).mean()

    def validation_nats(self, model, tokens, t=None, generator=None):
        return self.token_nats(model, tokens).sum(1), tokens.shape[1] - 1

    def sample(self, model, n_samples, seq_len, n_steps, generator, **kwargs):
        """trainers/samplers/ar.py; kwargs: use_cache (default True), top_p, bos_token_id."""
        with torch.no_grad():
            return sampler.sample(model, n_samples, seq_len, n_steps, generator,
                                  mask_token_id=self.mask_token_id, vocab_size=self.vocab_size, **kwargs)


def build(options, *, vocab_size: int, mask_token_id: int) -> ARFamily:
    if not isinstance(options, AROptions):
        options = ENTRY.parse_options(dict(options or {}))
    return ARFamily(options, vocab_size=vocab_size, mask_token_id=mask_token_id)
