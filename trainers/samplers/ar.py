"""AR sampler: token by token, Gumbel-max with optional nucleus, with or without a KV cache.

Position 0 is the start token (`bos_token_id`; the Pareto measurement passes the tokenizer's
<eos>, which precedes every document in the packed training data) or, without one, a uniform draw
over the real tokens; positions 1 .. L-1 are generated. n_steps is ignored: AR takes L - 1 steps.

- use_cache=True: the prefix goes through the model once; each step feeds only the newest token,
  whose keys and values join the cache (trainers/backbone.KVCache): O(L) token-forwards in all.
- use_cache=False: each step recomputes the whole prefix (O(L^2) token-forwards), the baseline
  of the speed comparison. Both draw the same noise, so for a seed they give the same samples
  (up to floating-point ties, which float64 tests rule out).
"""

from __future__ import annotations

import torch

from trainers.backbone import KVCache
from trainers.samplers.common import (check_arguments, gumbel_argmax, model_device, model_log_probs,
                                      start_with, uniform_real_tokens)

CACHE_MODES = (True, False)
USES_STEPS = False


def sample(model, n_samples: int, seq_len: int, n_steps: int, generator: torch.Generator, *,
           mask_token_id: int, vocab_size: int, use_cache: bool = True, top_p: float = 1.0,
           bos_token_id: int | None = None) -> torch.Tensor:
    check_arguments(n_samples, seq_len, max(n_steps, 1), top_p)
    device = model_device(model)
    x = torch.empty(n_samples, seq_len, dtype=torch.long, device=device)
    if not start_with(x, bos_token_id):
        x[:, 0] = uniform_real_tokens((n_samples,), vocab_size, mask_token_id, generator, device)
    cache = KVCache(seq_len) if use_cache else None
    for i in range(1, seq_len):
        if use_cache:  # the first call fills the cache with position 0; later ones add one token
            logits = model(input_ids=x[:, i - 1:i], kv_cache=cache, attention="causal")
        else:
            logits = model(input_ids=x[:, :i], attention="causal")
        x[:, i] = gumbel_argmax(model_log_probs(logits[:, -1], mask_token_id, top_p), generator)
    return x
