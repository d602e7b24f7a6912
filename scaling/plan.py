"""`scaling plan`: show exactly which runs a sweep expands to, as a table, CSV or JSON.

Rows are records (one per run, one column per field); the table view adds totals and the cells the
grid rejected, with their reasons. Nothing is started or written.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

from scaling.grid import GridPlan
from scaling.runspec import RunSpec

PLAN_FIELDS = ("run_id", "family", "label", "flops_budget", "shape", "n_layers", "d_model",
               "n_heads", "n_params", "n_params_total", "n_tokens", "tokens_per_param", "steps",
               "warmup_steps", "achieved_flops", "achieved_over_budget", "flops_convention",
               "fwd_flops_per_token", "global_batch_seqs", "seq_len", "config_hash")


def plan_row(spec: RunSpec) -> dict:
    return {
        "run_id": spec.run_id, "family": spec.family, "label": spec.label,
        "flops_budget": spec.flops_budget, "shape": spec.shape.name or spec.shape.tag,
        "n_layers": spec.shape.n_layers, "d_model": spec.shape.d_model,
        "n_heads": spec.shape.n_heads, "n_params": spec.n_params,
        "n_params_total": spec.n_params_total, "n_tokens": spec.n_tokens,
        "tokens_per_param": round(spec.tokens_per_param, 4), "steps": spec.steps,
        "warmup_steps": spec.warmup_steps, "achieved_flops": spec.achieved_flops,
        "achieved_over_budget": round(spec.achieved_flops / spec.flops_budget, 6),
        "flops_convention": spec.flops_convention,
        "fwd_flops_per_token": spec.fwd_flops_per_token,
        "global_batch_seqs": spec.recipe.global_batch_seqs, "seq_len": spec.recipe.seq_len,
        "config_hash": spec.config_hash,
    }


def render_csv(plan: GridPlan) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=PLAN_FIELDS, lineterminator="\n")
    writer.writeheader()
    for spec in plan.runs:
        writer.writerow(plan_row(spec))
    return out.getvalue()


def render_json(plan: GridPlan) -> str:
    return json.dumps([plan_row(spec) for spec in plan.runs], indent=2)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _placement(resources) -> str:
    """'8x1GPU' (workers x GPUs each), or '1x2CPU' for a run without GPUs."""
    each = f"{resources.gpus_per_worker:g}GPU" if resources.gpus_per_worker else \
        f"{resources.cpus_per_worker:g}CPU"
    return f"{resources.workers}x{each}"


def render_table(plan: GridPlan, sweep_name: str) -> str:
    header = ("family", "budget", "shape", "N non-emb", "D tokens", "tok/param", "steps",
              "achieved/C", "run_id")
    rows = [(s.label, f"{s.flops_budget:.3g}", s.shape.name or s.shape.tag, _si(s.n_params),
             _si(s.n_tokens), f"{s.tokens_per_param:.1f}", f"{s.steps:,}",
             f"{s.achieved_flops / s.flops_budget:.4f}", s.run_id) for s in plan.runs]
    placements = [_placement(s.resources) for s in plan.runs]
    if len(set(placements)) > 1:  # resources.tiers: say which runs get what
        header = (*header[:-1], "resources", header[-1])
        rows = [(*row[:-1], where, row[-1]) for row, where in zip(rows, placements)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"sweep {sweep_name}: {len(plan.runs)} runs", fmt.format(*header),
             fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    per_family = Counter(s.label for s in plan.runs)
    total_flops = sum(s.achieved_flops for s in plan.runs)
    total_tokens = sum(s.n_tokens for s in plan.runs)
    lines.append("")
    lines.append(f"total: {len(plan.runs)} runs ("
                 + ", ".join(f"{k} {v}" for k, v in per_family.items())
                 + f"), {total_flops:.3g} training FLOPs, {_si(total_tokens)} tokens")
    for rej in plan.rejected:
        lines.append(f"rejected: {rej.label} at {rej.flops_budget:.3g} FLOPs, {rej.shape}: {rej.reason}")
    return "\n".join(lines)
