"""Validation: the reported loss of a checkpoint, deterministic and comparable across families.

nats_per_token = total nats / total scored tokens, where a family's `validation_nats` gives the exact
NLL (AR: L - 1 scored tokens per sequence) or its NELBO (diffusion families: L per sequence).

Diffusion families are estimated with t_samples time draws per sequence. The n * t_samples times
are one stratified set (trainers/noise.py `fixed_validation_times`) shuffled by a seeded
permutation, so each sequence sees times spread over (0, 1]; the corruption draws come from one
generator seeded from `seed` and consumed in a fixed order. Same checkpoint, same blocks, same
arguments -> the same number. Families without time (`needs_time = False`) are evaluated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.noise import fixed_validation_times

CORRUPTION_SEED_OFFSET = 1  # corruption stream = seed + 1, so it differs from the time stream


@dataclass(frozen=True)
class ValidationResult:
    nats_per_token: float
    n_tokens_scored: int


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _time_table(n_seqs: int, t_samples: int, seed: int) -> torch.Tensor:
    """FloatTensor[t_samples, n_seqs]: stratified over all n_seqs * t_samples draws, shuffled."""
    times = fixed_validation_times(n_seqs * t_samples, seed)
    order = torch.randperm(times.numel(), generator=torch.Generator().manual_seed(seed))
    return times[order].view(t_samples, n_seqs)


@torch.no_grad()
def evaluate(model, family, val_blocks: torch.Tensor, *, t_samples: int, seed: int,
             batch_seqs: int) -> ValidationResult:
    """Validation nats per token of `model` on `val_blocks` (LongTensor[n, L]) under `family`."""
    if val_blocks.dim() != 2 or val_blocks.shape[0] == 0:
        raise ValueError(f"val_blocks must be a non-empty [n, L] tensor, got {tuple(val_blocks.shape)}")
    if t_samples < 1 or batch_seqs < 1:
        raise ValueError(f"t_samples and batch_seqs must be >= 1, got {t_samples}, {batch_seqs}")
    device = _device_of(model)
    n_seqs = val_blocks.shape[0]
    draws = t_samples if family.needs_time else 1
    times = _time_table(n_seqs, draws, seed)
    generator = torch.Generator(device=device).manual_seed(seed + CORRUPTION_SEED_OFFSET)

    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    n_scored = 0
    try:
        for draw in range(draws):
            for start in range(0, n_seqs, batch_seqs):
                tokens = val_blocks[start:start + batch_seqs].to(device)
                t = times[draw, start:start + batch_seqs].to(device)
                nats, per_seq = family.validation_nats(model, tokens, t, generator)
                total_nats += nats.double().sum()
                n_scored += per_seq * tokens.shape[0]
    finally:
        model.train(was_training)
    # every draw scores the same tokens: report the held-out tokens, average over the draws
    return ValidationResult(nats_per_token=float(total_nats) / n_scored, n_tokens_scored=n_scored // draws)
