"""The family protocol: what the engine, the validator and the samplers may ask of a family.

A family owns its corruption, its training objective, the number it reports for validation and its
sampler. It holds no training state: every method takes the model and the batch explicitly, so a
loss can be tested on its own with a planted model.

Shapes: tokens is LongTensor[B, L] of clean token ids; t is FloatTensor[B] of diffusion times in
(0, 1] (stratified over the global batch by trainers/noise.py; AR ignores it).

A model is called with keywords like the backbone (trainers/backbone.py DiTModel.forward): logits
[B, L, K], or [n, K] for the n positions of `output_rows` (BoolTensor[B, L]) when a loss scores
only some positions. Stand-in models in tests honour the same keywords.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class Family(ABC):
    name: ClassVar[str]
    attention: ClassVar[str]  # "causal" | "bidirectional" | "permuted_causal"
    needs_time: ClassVar[bool] = True  # False: the engine may skip time sampling (AR)

    def __init__(self, options, *, vocab_size: int, mask_token_id: int):
        self.options = options
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id

    @abstractmethod
    def training_loss(self, model, tokens: torch.Tensor, t: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar objective to minimise: mean nats per scored token of this family's objective."""

    @abstractmethod
    def validation_nats(self, model, tokens: torch.Tensor, t: torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """(nats summed per sequence, FloatTensor[B]; tokens scored per sequence). The reported
        quantity: exact NLL for AR, the NELBO for diffusion families, whatever the training
        objective, so validation = total nats / total scored tokens."""

    @abstractmethod
    def sample(self, model, n_samples: int, seq_len: int, n_steps: int,
               generator: torch.Generator, **kwargs) -> torch.Tensor:
        """LongTensor[n_samples, seq_len] of token ids, never the [MASK] id."""
