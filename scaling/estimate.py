"""Accelerator-hour estimates for a planned sweep, from one measured throughput.

A throughput measured on the 113M shape (12 x 768, sequence 2048, bf16) is turned into achieved
FLOP/s under the sweep's FLOPs convention, and every run is assumed to reach the same FLOP/s
(model FLOPs utilisation is roughly flat across the paper's 6M-2B ladder on one GPU type; larger
models usually do a little better, so this errs long). GPU-hours = training FLOPs / FLOP/s / 3600,
independent of how many GPUs share a run.
"""

from __future__ import annotations

from collections import defaultdict

from scaling import flops
from scaling.grid import GridPlan

REFERENCE_SHAPE = (12, 768)  # the 113M shape of the paper ladder
REFERENCE_VOCAB = 32001
REFERENCE_SEQ = 2048
HOPPER_BF16_PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet
# Default when no throughput is given: AR on the 113M shape with a run's GPU defaults (bf16
# autocast, compiled blocks and loss heads, cuDNN attention) at the paper's global batch (256 x 2048,
# 16 micro-batches of 16 accumulated), measured by benchmarks/gpu_variants.sh on one H100 80GB HBM3,
# 2026-11-27 (25.2% MFU). bf16 weights (DeepSpeed's bf16 mode) were 5% faster on the same card:
# AR 397K, MDLM 394K, Duo 314K, Eso-LM 432K tokens/s (benchmarks/GPU_NOTES.md).
MEASURED_TOKENS_PER_SECOND = 378_620.0
MEASURED_ON = "AR on one H100, bf16 autocast, global batch 256 x 2048, 2026-11-27"


def reference_flops_per_token() -> float:
    """Training FLOPs per token of the 113M shape under the paper convention (6 N')."""
    n_layers, d_model = REFERENCE_SHAPE
    return 3.0 * flops.compute_forward_flops_per_token(n_layers, d_model, REFERENCE_VOCAB,
                                                       REFERENCE_SEQ, "paper")


def default_tokens_per_second() -> float:
    return MEASURED_TOKENS_PER_SECOND


def model_flops_utilisation(tokens_per_second: float, peak_flops: float = HOPPER_BF16_PEAK_FLOPS) -> float:
    """Paper-convention MFU of the 113M shape at this throughput (6 N' FLOPs per token)."""
    return tokens_per_second * reference_flops_per_token() / peak_flops


def estimate_gpu_hours(plan: GridPlan, tokens_per_second: float | None = None) -> dict[str, float]:
    """GPU-hours per family label (and 'total')."""
    tps = tokens_per_second or default_tokens_per_second()
    flops_per_second = tps * reference_flops_per_token()
    hours: dict[str, float] = defaultdict(float)
    for spec in plan.runs:
        hours[spec.label] += spec.achieved_flops / flops_per_second / 3600.0
    hours["total"] = sum(hours.values())
    return dict(hours)


def render_estimate(plan: GridPlan, tokens_per_second: float | None = None) -> str:
    measured = tokens_per_second is not None
    tps = tokens_per_second or default_tokens_per_second()
    source = "given with --tokens-per-second" if measured else f"default: {MEASURED_ON}"
    lines = ["", f"estimate: {tps:,.0f} tokens/s per GPU on the 113M shape ({source}),",
             f"          i.e. {tps * reference_flops_per_token():.3g} FLOP/s per GPU for every run "
             f"({model_flops_utilisation(tps):.1%} MFU of an H100/H200)"]
    for label, hours in estimate_gpu_hours(plan, tps).items():
        lines.append(f"  {label:<14} {hours:>12,.0f} GPU-hours")
    return "\n".join(lines)
