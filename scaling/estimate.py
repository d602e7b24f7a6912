"""Accelerator-hour estimates for a planned sweep, from one measured throughput.

A throughput measured on the 113M shape (12 x 768, sequence 2048, bf16; AR unless told otherwise)
is turned into achieved FLOP/s under the sweep's FLOPs convention (the one its runs' FLOPs are
counted in; where a convention counts attention, AR's causal count), and every run is assumed to
reach the same FLOP/s (model FLOPs utilisation is roughly flat across the paper's 6M-2B ladder on
one GPU type; larger models usually do a little better, so this errs long). GPU-hours = training
FLOPs / FLOP/s / 3600, independent of how many GPUs share a run.
"""

from __future__ import annotations

import math
from collections import defaultdict

from scaling import flops
from scaling.grid import GridPlan

REFERENCE_SHAPE = (12, 768)  # the 113M shape of the paper ladder
REFERENCE_VOCAB = 32001
REFERENCE_SEQ = 2048
HOPPER_BF16_PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet
# Default when no throughput is given: AR on the 113M shape with a run's GPU defaults (bf16
# autocast, compiled blocks and loss heads, the fused head, cuDNN attention) at the paper's global
# batch (256 x 2048, 16 micro-batches of 16 accumulated), measured by benchmarks/gpu_variants.sh on
# one H100 80GB HBM3, 2026-11-27 (26.3% MFU; 384K tokens/s with the plain head in the same lease).
# bf16 weights (DeepSpeed's bf16 mode) were 3-5% faster on the same cards (benchmarks/GPU_NOTES.md).
MEASURED_TOKENS_PER_SECOND = 396_457.0
MEASURED_ON = "AR on one H100, bf16 autocast, fused head, global batch 256 x 2048, 2026-11-27"


def reference_flops_per_token(convention: str = "paper") -> float:
    """Training FLOPs per token of the 113M shape under a FLOPs convention (paper: 6 N'), counted
    as for AR, the family the default throughput was measured on."""
    n_layers, d_model = REFERENCE_SHAPE
    return 3.0 * flops.compute_forward_flops_per_token(n_layers, d_model, REFERENCE_VOCAB,
                                                       REFERENCE_SEQ, convention, causal=True)


def resolve_tokens_per_second(tokens_per_second: float | None) -> float:
    """The given throughput (finite and > 0, else ValueError), or the measured default."""
    if tokens_per_second is None:
        return MEASURED_TOKENS_PER_SECOND
    if not math.isfinite(tokens_per_second) or tokens_per_second <= 0:
        raise ValueError(f"tokens per second must be a finite number > 0, got {tokens_per_second}")
    return float(tokens_per_second)


def model_flops_utilisation(tokens_per_second: float, peak_flops: float = HOPPER_BF16_PEAK_FLOPS) -> float:
    """Paper-convention MFU of the 113M shape at this throughput (6 N' FLOPs per token)."""
    return tokens_per_second * reference_flops_per_token() / peak_flops


def estimate_gpu_hours(plan: GridPlan, tokens_per_second: float | None = None) -> dict[str, float]:
    """GPU-hours per family label (and 'total')."""
    tps = resolve_tokens_per_second(tokens_per_second)
    hours: dict[str, float] = defaultdict(float)
    for spec in plan.runs:
        flops_per_second = tps * reference_flops_per_token(spec.flops_convention)
        hours[spec.label] += spec.achieved_flops / flops_per_second / 3600.0
    hours["total"] = sum(hours.values())
    return dict(hours)


def render_estimate(plan: GridPlan, tokens_per_second: float | None = None) -> str:
    tps = resolve_tokens_per_second(tokens_per_second)
    given = tokens_per_second is not None
    source = "given with --tokens-per-second" if given else f"default: {MEASURED_ON}"
    convention = plan.runs[0].flops_convention if plan.runs else "paper"
    lines = ["", f"estimate: {tps:,.0f} tokens/s per GPU on the 113M shape ({source}),",
             f"          i.e. {tps * reference_flops_per_token(convention):.3g} FLOP/s per GPU in the "
             f"{convention} convention, reached by every run",
             f"          ({model_flops_utilisation(tps):.1%} MFU of an H100/H200, 6 N')"]
    for label, hours in estimate_gpu_hours(plan, tps).items():
        lines.append(f"  {label:<14} {hours:>12,.0f} GPU-hours")
    return "\n".join(lines)
