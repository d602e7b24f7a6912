"""Analytic parameter and FLOPs accounting: plain numbers in, plain numbers out.

Conventions (forward FLOPs per token; training FLOPs = 3 x forward, i.e. forward + 2x backward):

- ``paper``: 2 * (12 L d^2 + d K). The diffusion scaling study's count (arXiv 2602.15014, its public
  code): the linear layers of the blocks (QKV 3d^2, attention output d^2, MLP 8d^2) and the output
  head d K. Attention score/value matmuls, norms, modulation and the embedding lookup are not
  counted. So C ~ 6 N' D with N' = 12 L d^2 + d K.
- ``6n``: 2 * N, N = non-embedding parameters as the paper counts them (total - K d). C = 6 N D.
- ``full``: ``paper`` plus the attention matmuls, QK^T and AV at 2 * seq * d each per layer
  (Hoffmann et al. 2022, App. F); causal attention (AR, Eso-LM) counts half of bidirectional.

Parameter counts are those of the backbone in trainers/backbone.py (DiT with adaLN-Zero, REFERENCE
§2), and a test checks that the two agree exactly. "Non-embedding" is the paper's x-axis: total
parameters minus the input embedding K d (the untied output head is counted).
"""

from __future__ import annotations

import math

CONVENTIONS = ("paper", "6n", "full")
COND_DIM = 128  # adaLN conditioning width (REFERENCE §2)
TIME_FREQ_DIM = 256  # sinusoidal embedding width fed to the time MLP (DiT / MDLM code)
MLP_RATIO = 4  # GELU MLP of width 4d


def count_block_params(d_model: int, cond_dim: int = COND_DIM) -> int:
    """One transformer block: 2 bias-free LayerNorms, fused QKV + output (no bias), MLP with biases,
    adaLN-Zero modulation Linear(cond, 6d) with bias."""
    norms = 2 * d_model
    attention = 4 * d_model * d_model
    hidden = MLP_RATIO * d_model
    mlp = d_model * hidden + hidden + hidden * d_model + d_model
    modulation = cond_dim * 6 * d_model + 6 * d_model
    return norms + attention + mlp + modulation


def count_time_embedding_params(cond_dim: int = COND_DIM, freq_dim: int = TIME_FREQ_DIM) -> int:
    """Sinusoidal features -> Linear(freq, cond) -> SiLU -> Linear(cond, cond), both with bias."""
    return freq_dim * cond_dim + cond_dim + cond_dim * cond_dim + cond_dim


def count_head_params(d_model: int, vocab_size: int, cond_dim: int = COND_DIM) -> int:
    """Final bias-free LayerNorm, adaLN Linear(cond, 2d) with bias, untied Linear(d, K) with bias."""
    return d_model + cond_dim * 2 * d_model + 2 * d_model + d_model * vocab_size + vocab_size


def count_params(n_layers: int, d_model: int, vocab_size: int) -> int:
    """Total parameters of the backbone, input embedding included."""
    return (
        vocab_size * d_model
        + n_layers * count_block_params(d_model)
        + count_time_embedding_params()
        + count_head_params(d_model, vocab_size)
    )


def count_non_embedding_params(n_layers: int, d_model: int, vocab_size: int) -> int:
    """The paper's 'non-embedding parameters': total minus the input embedding K d."""
    return count_params(n_layers, d_model, vocab_size) - vocab_size * d_model


def count_paper_flops_params(n_layers: int, d_model: int, vocab_size: int) -> int:
    """N' = 12 L d^2 + d K, the parameter count behind the paper's FLOPs convention."""
    return 12 * n_layers * d_model * d_model + d_model * vocab_size


def compute_forward_flops_per_token(
    n_layers: int,
    d_model: int,
    vocab_size: int,
    seq_len: int,
    convention: str = "paper",
    causal: bool = False,
) -> float:
    """Forward FLOPs per token under a named convention (module docstring)."""
    if convention == "paper":
        return 2.0 * count_paper_flops_params(n_layers, d_model, vocab_size)
    if convention == "6n":
        return 2.0 * count_non_embedding_params(n_layers, d_model, vocab_size)
    if convention == "full":
        attention = 4.0 * n_layers * seq_len * d_model  # QK^T + AV, 2 * seq * d each
        if causal:
            attention /= 2.0
        return 2.0 * count_paper_flops_params(n_layers, d_model, vocab_size) + attention
    raise ValueError(f"unknown FLOPs convention {convention!r}; choose one of {CONVENTIONS}")


def compute_training_flops(fwd_flops_per_token: float, n_tokens: float) -> float:
    """Training FLOPs = 3 x forward FLOPs (backward ~ 2x forward)."""
    return 3.0 * fwd_flops_per_token * n_tokens


def solve_for_steps(
    flops_budget: float, fwd_flops_per_token: float, seq_len: int, global_batch_seqs: int
) -> int:
    """Optimizer steps that fit in the budget: floor(C / (3 F_fwd_seq B)), F_fwd_seq = seq F_fwd_tok."""
    flops_per_step = 3.0 * fwd_flops_per_token * seq_len * global_batch_seqs
    # A hair of slack so a budget that is an exact multiple of the step cost is not floored down.
    return int(math.floor(flops_budget / flops_per_step * (1.0 + 1e-12)))


def solve_for_tokens(flops_budget: float, fwd_flops_per_token: float) -> float:
    """Training tokens a budget buys (continuous, before rounding to whole steps)."""
    return flops_budget / (3.0 * fwd_flops_per_token)


def compute_achieved_flops(
    steps: int, fwd_flops_per_token: float, seq_len: int, global_batch_seqs: int
) -> float:
    """Training FLOPs actually spent by `steps` optimizer steps."""
    return compute_training_flops(fwd_flops_per_token, steps * seq_len * global_batch_seqs)
