"""Pieces every sampler shares: seeded categorical draws, nucleus filtering, the time grid.

Draws are Gumbel-max in float64: argmax(log p + G), G = -log(-log U), U ~ U[0, 1) from the caller's
torch.Generator, so a sample is a pure function of (model, seed, arguments). float64 because
float32 Gumbel noise truncates the tail of the distribution and measurably lowers the diversity of
diffusion samples (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked
models and exploit inaccurate categorical sampling"; the MDLM/Duo code samples in float64 too).
"""

from __future__ import annotations

import torch

from trainers.backbone import forbid_token

# Last time of the MDLM / Duo ancestral grid t = linspace(1, SAMPLING_EPS, T + 1): their
# `_sample(eps=1e-5)` default; a final noise-removal step then goes from SAMPLING_EPS to 0.
SAMPLING_EPS = 1e-5
GUMBEL_CHUNK_ELEMENTS = 1 << 26  # 64M float64 noise entries (512 MiB) per chunk of draws


def model_device(model) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free stand-in)."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def check_arguments(n_samples: int, seq_len: int, n_steps: int, top_p: float) -> None:
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be >= 1, got {n_samples}, {seq_len}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def nucleus(log_p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Renormalised log-probabilities restricted to the smallest set of tokens whose mass reaches
    top_p (Holtzman et al. 2020); the most likely token is always kept. top_p = 1: unchanged."""
    if top_p >= 1.0:
        return log_p
    sorted_log_p, order = log_p.sort(dim=-1, descending=True)
    probs = sorted_log_p.exp()
    outside = (probs.cumsum(-1) - probs) >= top_p  # the mass before this token already reaches top_p
    sorted_log_p = sorted_log_p.masked_fill(outside, float("-inf"))
    kept = torch.full_like(log_p, float("-inf")).scatter(-1, order, sorted_log_p)
    return kept.log_softmax(-1)


def model_log_probs(logits: torch.Tensor, mask_token_id: int, top_p: float = 1.0) -> torch.Tensor:
    """float32 log p over the vocabulary with [MASK] impossible, nucleus-filtered."""
    return nucleus(torch.log_softmax(forbid_token(logits, mask_token_id), dim=-1), top_p)


def gumbel_argmax(log_p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of the categorical log_p [..., V] (rows may hold -inf, not all of them).
    Rows go in chunks of about GUMBEL_CHUNK_ELEMENTS so the float64 noise stays bounded in memory
    (a paper-scale Duo step is 16 x 2048 x 32001 entries)."""
    flat = log_p.reshape(-1, log_p.shape[-1])
    rows = max(1, GUMBEL_CHUNK_ELEMENTS // flat.shape[1])
    draws = []
    for chunk in flat.split(rows):
        u = torch.rand(chunk.shape, generator=generator, device=chunk.device, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u))  # u = 0 gives -inf noise: that token is simply not drawn
        draws.append((chunk.double() + gumbel).argmax(dim=-1))
    return torch.cat(draws).view(log_p.shape[:-1])


def time_grid(n_steps: int, t_end: float, device) -> torch.Tensor:
    """float64 t = linspace(1, t_end, n_steps + 1): step i goes from t[i] to s = t[i + 1]."""
    return torch.linspace(1.0, t_end, n_steps + 1, dtype=torch.float64, device=device)


def uniform_real_tokens(shape, vocab_size: int, mask_token_id: int, generator: torch.Generator,
                        device) -> torch.Tensor:
    """Uniform draws over the vocab_size - 1 ids that are not [MASK]."""
    draw = torch.randint(0, vocab_size - 1, shape, generator=generator, device=device)
    return draw + (draw >= mask_token_id).long()


def start_with(x: torch.Tensor, bos_token_id: int | None) -> int:
    """Clamp position 0 to the start token when one is given; returns the prompt length (0 or 1).

    The Pareto measurement passes the tokenizer's <eos>, the document separator of the packed
    training data, so every family conditions on the same start of a document."""
    if bos_token_id is None:
        return 0
    x[:, 0] = bos_token_id
    return 1
