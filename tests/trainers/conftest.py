"""Helpers for the backbone and family tests: one CPU thread (the machine is shared), a randomised
backbone (a fresh one is zero-initialised at the head and adaLN, so its logits carry no signal)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std^2) noise (LayerNorm weights around 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            param.copy_(noise + 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                        or name.endswith("norm_final.weight") else noise)
    return model


@pytest.fixture
def random_model():
    """Factory: a small randomised backbone in eval mode."""
    from trainers.backbone import build_model

    def make(attention="bidirectional", n_layers=2, d_model=32, n_heads=2, vocab_size=24,
             mask_token_id=23, seed=0, std=0.3):
        torch.manual_seed(seed)
        model = build_model(n_layers, d_model, n_heads, vocab_size, attention, mask_token_id)
        return randomize_(model, seed, std).eval()

    return make
