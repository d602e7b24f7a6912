"""Eso-LM: interpolating AR <-> masked diffusion (Sahoo et al. 2025, Eso-LM (B); REFERENCE §1).

Generation runs a masked diffusion from all-[MASK] down to a fraction alpha_0 of clean tokens, then
fills the rest left to right. Training follows the public Eso-LM code:

- Diffusion term, alpha_t = alpha_0 (1 - (1 - eps) t): mask each token w.p. 1 - alpha_t (as MDLM),
  then draw a permutation per sequence that puts the clean tokens first and the masked ones after,
  each group in random order (`clean_first_permutation`). The backbone attends causally over that
  order with rotary positions permuted to match (`attention="permuted_causal"`), which is what makes
  an exact KV cache possible while sampling. SUBS as in MDLM, no time conditioning (sigma = 0).
  Training uses the low-variance objective (unweighted cross-entropy on masked tokens, the paper's
  sweeps); validation the NELBO weight -alpha'_t / (1 - alpha_t) (= 1/t for alpha_0 = 1).
- Sequential (AR) term, only for alpha_0 < 1: z_0 masks each token w.p. 1 - alpha_0; the order puts
  z_0's clean tokens first (random order) and its masked tokens after, left to right. The model reads
  [z_0 sorted ; x_0 sorted] (2L tokens, rotary positions [perm ; perm]) under the mask of
  `sequential_attention_mask`: the query at sorted slot i is z_0's token there (a [MASK] for a
  scored slot) and sees only itself and x_0's tokens at slots < i; x_0's tokens attend causally to
  each other. So each masked token is predicted from the clean tokens and the masked tokens left of
  it, never from itself: -sum over those tokens of log p is the exact AR part of the bound.
  (The Eso-LM code's `_sequential_features` with `_block_diff_mask`, block size 1.) Both terms are
  computed on every sequence (the Eso-LM code splits the batch between them; the sum is the same
  estimate with more samples).

Per sequence, validation = AR nats + NELBO-weighted diffusion nats, over L scored tokens.
"""

from __future__ import annotations

import torch

from trainers import kernels, noise
from trainers.families.base import Family
from trainers.families.mdlm import fused_scored_cross_entropy, mask_tokens, scored_cross_entropy
from trainers.families.registry import EsoLMOptions, get_entry
from trainers.samplers import esolm as sampler

ENTRY = get_entry("esolm")


def clean_first_permutation(masked: torch.Tensor, generator: torch.Generator | None,
                            masked_in_order: bool = False) -> torch.Tensor:
    """LongTensor[B, L]: per row, clean positions first then masked ones; random order inside each
    group, or left to right for the masked group when `masked_in_order` (the Eso-LM sort keys)."""
    B, L = masked.shape
    keys = torch.rand((B, L), generator=generator, device=masked.device) * 0.9
    if masked_in_order:
        ramp = torch.linspace(0.0, 0.9, L, device=masked.device).expand(B, L)
        keys = torch.where(masked, ramp, keys)
    return torch.argsort(keys + masked.to(keys.dtype), dim=1)


def sequential_attention_mask(seq_len: int, device) -> torch.Tensor:
    """Bool [2L, 2L] over [z_0 sorted ; x_0 sorted]: z slot i sees itself and x slots < i; x slot i
    sees x slots <= i. True = may attend."""
    ones = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
    top = torch.cat([torch.eye(seq_len, dtype=torch.bool, device=device), ones.tril(-1)], dim=1)
    bottom = torch.cat([torch.zeros_like(ones), ones.tril()], dim=1)
    return torch.cat([top, bottom], dim=0)


class EsoLMFamily(Family):
    name = ENTRY.name
    attention = ENTRY.attention
    needs_time = True

    @property
    def alpha_0(self) -> float:
        return self.options.alpha_0

    def diffusion_inputs(self, tokens: torch.Tensor, t: torch.Tensor,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(targets, scored, model inputs) of the diffusion term: the masked positions of x_t,
        read under a clean-first causal order."""
        x_t, masked = mask_tokens(tokens, noise.alpha(t, self.alpha_0), self.mask_token_id, generator)
        permutation = clean_first_permutation(masked, generator)
        return tokens, masked, dict(input_ids=x_t, sigma=None, permutation=permutation)

    def sequential_inputs(self, tokens: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(targets, scored, model inputs) of the sequential term over [z_0 sorted ; x_0 sorted]:
        only z_0's masked slots (in the first L) are scored."""
        B, L = tokens.shape
        alpha_0 = torch.full((B,), self.alpha_0, device=tokens.device)
        z_0, masked = mask_tokens(tokens, alpha_0, self.mask_token_id, generator)
        permutation = clean_first_permutation(masked, generator, masked_in_order=True)
        x_sorted = tokens.gather(1, permutation)
        scored = masked.gather(1, permutation)
        inputs = dict(input_ids=torch.cat([z_0.gather(1, permutation), x_sorted], dim=1), sigma=None,
                      position_ids=torch.cat([permutation, permutation], dim=1),
                      attention_mask=sequential_attention_mask(L, tokens.device))
        return torch.cat([x_sorted, x_sorted], dim=1), torch.cat([scored, torch.zeros_like(scored)], 1), inputs

    def diffusion_nats(self, model, tokens: torch.Tensor, t: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Unweighted -log p(x^l | x_t) at masked positions under a clean-first causal order, [B, L]."""
        targets, scored, inputs = self.diffusion_inputs(tokens, t, generator)
        return scored_cross_entropy(model, targets, scored, self.mask_token_id, **inputs)

    def sequential_nats(self, model, tokens: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p of the tokens still masked at alpha_0, each given the clean ones and the masked
        ones left of it, [B, L] in the sorted order (0 at clean slots)."""
        targets, scored, inputs = self.sequential_inputs(tokens, generator)
        return scored_cross_entropy(model, targets, scored, self.mask_token_id, **inputs)[:, :tokens.shape[1]]

    def _nats(self, model, tokens, t, generator, weighted: bool) -> torch.Tensor:
        t = t.to(tokens.device)
        nats = self.diffusion_nats(model, tokens, t, generator).sum(1)
        if weighted:
            nats = nats * noise.masked_nelbo_weight(t, self.alpha_0)
        if self.alpha_0 < 1.0:
            nats = nats + self.sequential_nats(model, tokens, generator).sum(1)
        return nats

    def training_loss(self, model, tokens, t, generator=None):
        if not kernels.fused_head_enabled():
            return self._nats(model, tokens, t, generator, weighted=False).mean() / tokens.shape[1]
        weight = 1.0 / tokens.numel()  # both terms: mean over sequences, per token
        terms = [self.diffusion_inputs(tokens, t.to(tokens.device), generator)]
        if self.alpha_0 < 1.0:
            terms.append(self.sequential_inputs(tokens, generator))
        return sum(fused_scored_cross_entropy(model, targets, scored, self.mask_token_id, weight, **inputs)[0]
                   for targets, scored, inputs in terms)

    def validation_nats(self, model, tokens, t, generator=None):
        return self._nats(model, tokens, t, generator, weighted=True), tokens.shape[1]

    def sample(self, model, n_samples, seq_len, n_steps, generator, **kwargs):
        """trainers/samplers/esolm.py; kwargs: use_cache (default True), top_p, bos_token_id,
        alpha_0 (default: the family's)."""
        kwargs.setdefault("alpha_0", self.alpha_0)
        with torch.no_grad():
            return sampler.sample(model, n_samples, seq_len, n_steps, generator,
                                  mask_token_id=self.mask_token_id, vocab_size=self.vocab_size, **kwargs)


def build(options, *, vocab_size: int, mask_token_id: int) -> EsoLMFamily:
    if not isinstance(options, EsoLMOptions):
        options = ENTRY.parse_options(dict(options or {}))
    return EsoLMFamily(options, vocab_size=vocab_size, mask_token_id=mask_token_id)
