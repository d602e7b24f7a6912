"""Eso-LM sampler: masked diffusion down to a fraction alpha_0 of clean tokens, then left to right,
with an exact KV cache over the clean tokens (Sahoo et al. 2025, Eso-LM (B); REFERENCE §5).

The whole generation is one causal order over positions, fixed up front: the prompt (position 0
when `bos_token_id` is given), then the diffusion phase's positions in a uniformly random order,
then the remaining ones left to right. Diffusion phase: T steps on t = linspace(1, 0, T + 1) of
alpha_t = alpha_0 (1 - (1 - eps) t); from t to s each masked token unmasks with probability
(alpha_s - alpha_t) / (1 - alpha_t), so the step reveals a Binomial(n_masked, p) number of tokens,
taken as the next ones of the random order. One count is drawn per step for the whole batch (the
positions differ row by row), so every row has the same number of tokens in flight and the batch
shares one cache; each row's count is still exactly Binomial (rows are merely correlated). With
alpha_0 = 1 the last step (s = 0, p = 1) reveals everything; with alpha_0 < 1 about (1 - alpha_0) L
tokens remain and are filled one at a time, left to right. A step that reveals nothing is skipped.

Each model call is exactly the training forward (trainers/families/esolm.py: causal attention over
a clean-first permutation, rotary positions permuted to match) restricted to the queried tokens:
the input is [clean tokens in order ; [MASK] at the positions revealed now], and since attention is
causal in that order, the masked tokens revealed later would not change those logits.

- use_cache=True: each call feeds only the tokens revealed by the previous call (their keys join
  the cache, `cache_commit`) plus the [MASK] queries (whose keys are dropped): every clean token
  goes through the model once.
- use_cache=False: each call recomputes all clean tokens. Same order, same noise: the two modes
  give the same samples (float64 tests; in float32 a tie could differ).
"""

from __future__ import annotations

import torch

from trainers import noise
from trainers.backbone import KVCache
from trainers.samplers.common import (check_arguments, gumbel_argmax, model_device, model_log_probs,
                                      start_with, time_grid)

CACHE_MODES = (True, False)
USES_STEPS = True


def reveal_counts(n_masked: int, n_steps: int, alpha_0: float, generator: torch.Generator,
                  device) -> list[int]:
    """Tokens revealed at each diffusion step (Binomial draws, one per step); sum <= n_masked."""
    alphas = noise.alpha(time_grid(n_steps, 0.0, device), alpha_0)
    counts = []
    for i in range(n_steps):
        p = (alphas[i + 1] - alphas[i]) / (1.0 - alphas[i])
        u = torch.rand(n_masked, generator=generator, device=device, dtype=torch.float64)
        count = int((u < p).sum())
        counts.append(count)
        n_masked -= count
    return counts


def generation_order(n_samples: int, seq_len: int, n_prompt: int, n_diffusion: int,
                     generator: torch.Generator, device) -> torch.Tensor:
    """LongTensor[B, L]: the prompt, then a random order of the diffusion positions, then the rest
    left to right."""
    keys = torch.rand((n_samples, seq_len), generator=generator, device=device)
    keys[:, :n_prompt] = -1.0
    order = keys.argsort(dim=1)
    tail = order[:, n_prompt + n_diffusion:].sort(dim=1).values
    return torch.cat([order[:, :n_prompt + n_diffusion], tail], dim=1)


class _Decoder:
    """Logits at `queries` given the tokens at order[:, :n_clean], via a cache or recomputation."""

    def __init__(self, model, mask_token_id: int, seq_len: int, use_cache: bool):
        self.model, self.mask_token_id = model, mask_token_id
        self.cache = KVCache(seq_len) if use_cache else None

    def query(self, x: torch.Tensor, order: torch.Tensor, n_clean: int, queries: torch.Tensor):
        first = self.cache.length if self.cache is not None else 0
        clean = order[:, first:n_clean]
        masks = torch.full_like(queries, self.mask_token_id)
        commit = clean.shape[1] if self.cache is not None else None  # the [MASK] queries' keys go
        logits = self.model(input_ids=torch.cat([x.gather(1, clean), masks], dim=1), sigma=None,
                            position_ids=torch.cat([clean, queries], dim=1), attention="permuted_causal",
                            kv_cache=self.cache, cache_commit=commit)
        return logits[:, -queries.shape[1]:]


def sample(model, n_samples: int, seq_len: int, n_steps: int, generator: torch.Generator, *,
           mask_token_id: int, vocab_size: int, use_cache: bool = True, top_p: float = 1.0,
           bos_token_id: int | None = None, alpha_0: float = 1.0) -> torch.Tensor:
    check_arguments(n_samples, seq_len, n_steps, top_p)
    if not 0.0 < alpha_0 <= 1.0:
        raise ValueError(f"alpha_0 must be in (0, 1], got {alpha_0}")
    device = model_device(model)
    x = torch.full((n_samples, seq_len), mask_token_id, dtype=torch.long, device=device)
    n_prompt = start_with(x, bos_token_id)
    counts = [c for c in reveal_counts(seq_len - n_prompt, n_steps, alpha_0, generator, device) if c]
    n_diffusion = sum(counts)
    order = generation_order(n_samples, seq_len, n_prompt, n_diffusion, generator, device)
    decoder = _Decoder(model, mask_token_id, seq_len, use_cache)
    n_clean = n_prompt
    for size in counts + [1] * (seq_len - n_prompt - n_diffusion):
        queries = order[:, n_clean:n_clean + size]
        logits = decoder.query(x, order, n_clean, queries)
        x.scatter_(1, queries, gumbel_argmax(model_log_probs(logits, mask_token_id, top_p), generator))
        n_clean += size
    return x
