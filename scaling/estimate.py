"""Accelerator-hour estimates for a planned sweep, from one measured throughput.

A throughput measured on the 113M shape (12 x 768, sequence 2048, bf16; AR unless told otherwise)
is turned into achieved FLOP/s under the sweep's FLOPs convention (the one its runs' FLOPs are
counted in; where a convention counts attention, AR's causal count), and every run is assumed to
reach the same FLOP/s (model FLOPs utilisation is roughly flat across the paper's 6M-2B ladder on
one GPU type; larger models usually do a little better, so this errs long). GPU-hours = training
FLOPs / FLOP/s / 3600, independent of how many GPUs share a run.

The wall-clock on a cluster of G GPUs (the makespan) replays the runner's schedule
(scaling/runner.py, whose pure ordering and fitting functions it reuses): runs in the runner's
order, longest first, each started as soon as its GPUs fit beside the runs in flight, in order, no
backfill. A run on k GPUs (workers x gpus_per_worker) is taken to train k times as fast as on one:
ideal data parallelism, so this errs short for multi-GPU runs. CPUs are not modelled.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from scaling import flops
from scaling.grid import GridPlan
from scaling.runner import estimated_seconds, fits_alongside, resource_need
from scaling.runspec import RunSpec

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


def run_gpu_hours(spec: RunSpec, tokens_per_second: float) -> float:
    """GPU-hours of one run: its training FLOPs over one GPU's FLOP/s in its FLOPs convention."""
    flops_per_second = tokens_per_second * reference_flops_per_token(spec.flops_convention)
    return spec.achieved_flops / flops_per_second / 3600.0


def estimate_gpu_hours(plan: GridPlan, tokens_per_second: float | None = None) -> dict[str, float]:
    """GPU-hours per family label (and 'total')."""
    tps = resolve_tokens_per_second(tokens_per_second)
    hours: dict[str, float] = defaultdict(float)
    for spec in plan.runs:
        hours[spec.label] += run_gpu_hours(spec, tps)
    hours["total"] = sum(hours.values())
    return dict(hours)


@dataclass(frozen=True)
class ScheduledRun:
    run_id: str
    gpus: float  # workers x gpus_per_worker
    start_hours: float  # from the start of the sweep
    end_hours: float

    @property
    def hours(self) -> float:
        return self.end_hours - self.start_hours


@dataclass(frozen=True)
class Makespan:
    """A sweep's wall-clock on a cluster of `gpus` GPUs, and the schedule that gives it."""

    gpus: int
    hours: float  # from the first start to the last finish
    schedule: tuple[ScheduledRun, ...]  # in start order

    @property
    def busy_gpu_hours(self) -> float:
        """The GPU-hours the runs hold: the sweep's GPU-hours, whatever the cluster."""
        return sum(run.gpus * run.hours for run in self.schedule)

    @property
    def utilisation(self) -> float:
        """The fraction of the cluster's GPU-hours over the makespan that runs hold."""
        return self.busy_gpu_hours / (self.gpus * self.hours) if self.hours else 0.0

    @property
    def longest(self) -> ScheduledRun:
        return max(self.schedule, key=lambda run: run.hours)


def _check_cluster(plan: GridPlan, gpus: int) -> None:
    """ValueError, naming the run and the fix, where the makespan cannot be estimated."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"a cluster needs a whole number of GPUs >= 1, got {gpus!r}")
    if not plan.runs:
        raise ValueError("the plan has no runs")
    for spec in plan.runs:
        need = resource_need(spec).get("GPU", 0.0)
        if not need:
            raise ValueError(f"run {spec.run_id} asks for no GPUs (resources.gpus_per_worker 0); the "
                             "wall-clock is estimated for GPU runs only: set resources.gpus_per_worker "
                             "(or its tier's)")
    largest = max(plan.runs, key=lambda spec: resource_need(spec)["GPU"])
    need = resource_need(largest)["GPU"]
    if need > gpus + 1e-9:
        raise ValueError(
            f"run {largest.run_id} needs {need:g} GPUs ({largest.resources.workers} workers x "
            f"{largest.resources.gpus_per_worker:g}), more than the cluster's {gpus}; estimate for "
            f"--gpus {math.ceil(need)} or more, or give it fewer workers (resources.workers, or its "
            f"tier's)")


def estimate_makespan(plan: GridPlan, gpus: int, tokens_per_second: float | None = None) -> Makespan:
    """Replay the runner's schedule on `gpus` GPUs; ValueError for an empty plan, a run without
    GPUs (its speed is not what the throughput measures) or a run larger than the cluster."""
    tps = resolve_tokens_per_second(tokens_per_second)
    _check_cluster(plan, gpus)
    total = {"GPU": float(gpus), "CPU": math.inf}  # GPUs are what a GPU sweep waits for
    pending = sorted(plan.runs, key=estimated_seconds, reverse=True)  # as run_sweep orders them
    running: list[tuple[float, RunSpec]] = []  # (end hours, spec)
    schedule: list[ScheduledRun] = []
    now = 0.0
    while pending or running:
        while pending and fits_alongside(total, [spec for _, spec in running], pending[0]):
            spec = pending.pop(0)  # in order: a run that does not fit holds back those after it
            need = resource_need(spec)["GPU"]
            end = now + run_gpu_hours(spec, tps) / need
            running.append((end, spec))
            schedule.append(ScheduledRun(spec.run_id, need, now, end))
        now = min(end for end, _ in running)
        running = [(end, spec) for end, spec in running if end > now]
    return Makespan(gpus, now, tuple(schedule))


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def render_estimate(plan: GridPlan, tokens_per_second: float | None = None,
                    makespan: Makespan | None = None) -> str:
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
    if makespan is not None:
        longest = makespan.longest
        lines += [f"  wall-clock on {makespan.gpus} GPUs: {_duration(makespan.hours)}, the GPUs "
                  f"{makespan.utilisation:.1%} busy (the longest run {_duration(longest.hours)} on "
                  f"{longest.gpus:g} GPUs)",
                  "          runs start in the runner's order, longest first, each as soon as its "
                  "GPUs are free (no backfill);",
                  "          a run on k GPUs is taken to train k times as fast as on one (ideal data "
                  "parallelism)"]
    return "\n".join(lines)
