"""Grid expansion: families x budgets x selected shapes -> frozen run specs.

Pure: no Ray, no DeepSpeed, no filesystem. For each (family, budget) the selection rule picks
shapes by the tokens per (non-embedding) parameter they would train on; each selected shape becomes
a RunSpec whose steps are floor(C / (3 F_fwd_seq B)). Rounding to whole steps must keep the achieved
FLOPs within 1% of the budget; a cell that cannot is rejected with its reason (it needs < 100 steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling import flops
from scaling.errors import UserError
from scaling.ladders import build_ladder
from scaling.runspec import RunSpec
from scaling.schema import AroundOptimumSelection, FamilyChoice, Shape, Sweep
from trainers.families.registry import FAMILIES, get_entry

MAX_ROUNDING_LOSS = 0.01  # achieved FLOPs may fall short of the budget by at most 1%


@dataclass(frozen=True)
class Cell:
    """One candidate (family, budget, shape) with its derived sizes, before selection."""

    choice: FamilyChoice
    flops_budget: float
    shape: Shape
    fwd_flops_per_token: float
    steps: int
    n_tokens: int
    n_params: int
    tokens_per_param: float
    achieved_flops: float


@dataclass(frozen=True)
class Rejection:
    label: str
    flops_budget: float
    shape: str
    reason: str


@dataclass(frozen=True)
class GridPlan:
    runs: tuple[RunSpec, ...]
    rejected: tuple[Rejection, ...]


def build_cell(sweep: Sweep, choice: FamilyChoice, flops_budget: float, shape: Shape) -> Cell:
    recipe, vocab = sweep.recipe, sweep.data.vocab_size
    fwd = flops.compute_forward_flops_per_token(
        shape.n_layers, shape.d_model, vocab, recipe.seq_len, sweep.flops_convention,
        causal=get_entry(choice.family).causal_flops)
    steps = flops.solve_for_steps(flops_budget, fwd, recipe.seq_len, recipe.global_batch_seqs)
    n_tokens = steps * recipe.seq_len * recipe.global_batch_seqs
    n_params = flops.count_non_embedding_params(shape.n_layers, shape.d_model, vocab)
    return Cell(choice, flops_budget, shape, fwd, steps, n_tokens, n_params,
                n_tokens / n_params,
                flops.compute_achieved_flops(steps, fwd, recipe.seq_len, recipe.global_batch_seqs))


def _ideal_tokens_per_param(cell: Cell) -> float:
    """Tokens/param before rounding to whole steps, so selection does not depend on rounding."""
    return flops.solve_for_tokens(cell.flops_budget, cell.fwd_flops_per_token) / cell.n_params


def select_cells(sweep: Sweep, cells: list[Cell]) -> list[Cell]:
    """Apply the sweep's selection rule to the candidate cells of one (family, budget)."""
    rule = sweep.selection
    if isinstance(rule, AroundOptimumSelection):
        n_guess = math.sqrt(cells[0].flops_budget / (6.0 * rule.tokens_per_param_guess))
        ranked = sorted(cells, key=lambda c: abs(math.log(c.n_params / n_guess)))
        chosen = ranked[: rule.k]
    else:
        low, high = rule.tokens_per_param
        chosen = [c for c in cells if low <= _ideal_tokens_per_param(c) <= high]
        if rule.max_shapes is not None and len(chosen) > rule.max_shapes:
            centre = math.sqrt(low * high)
            chosen = sorted(chosen, key=lambda c: abs(math.log(_ideal_tokens_per_param(c) / centre)))
            chosen = chosen[: rule.max_shapes]
    return sorted(chosen, key=lambda c: c.n_params)


def _no_shape_error(sweep: Sweep, budget_index: int, cells: list[Cell]) -> UserError:
    low, high = sweep.selection.tokens_per_param
    ratios = sorted(_ideal_tokens_per_param(c) for c in cells)
    return UserError(
        f"sweep.budgets[{budget_index}]: no shape of the ladder trains on {low:g}-{high:g} tokens/param "
        f"at {cells[0].flops_budget:.3g} FLOPs (the ladder spans {ratios[0]:.3g}-{ratios[-1]:.3g}); "
        f"widen selection.tokens_per_param or add shapes to the ladder")


def _rejection_reason(cell: Cell, sweep: Sweep) -> str | None:
    if cell.steps < 1:
        return "the budget buys less than one optimizer step"
    shortfall = 1.0 - cell.achieved_flops / cell.flops_budget
    if shortfall > MAX_ROUNDING_LOSS:
        return (f"{cell.steps} whole steps spend only {100 * (1 - shortfall):.1f}% of the budget "
                f"(>1% lost to rounding); use a smaller global batch or a larger budget")
    if sweep.recipe.warmup_steps(cell.steps) >= cell.steps:
        return "warmup covers the whole run"
    return None


def to_runspec(sweep: Sweep, cell: Cell) -> RunSpec:
    shape, vocab = cell.shape, sweep.data.vocab_size
    return RunSpec(
        sweep=sweep.name, family=cell.choice.family, label=cell.choice.label,
        options=cell.choice.options, shape=shape, vocab_size=vocab,
        flops_budget=cell.flops_budget, flops_convention=sweep.flops_convention,
        fwd_flops_per_token=cell.fwd_flops_per_token, steps=cell.steps,
        warmup_steps=sweep.recipe.warmup_steps(cell.steps), n_tokens=cell.n_tokens,
        n_params=cell.n_params,
        n_params_total=flops.count_params(shape.n_layers, shape.d_model, vocab),
        tokens_per_param=cell.tokens_per_param, achieved_flops=cell.achieved_flops,
        recipe=sweep.recipe, data=sweep.data, evaluation=sweep.evaluation,
        resources=sweep.resources.for_run(cell.choice.label, cell.n_params, cell.flops_budget),
        max_retries=sweep.max_retries)


def expand(sweep: Sweep) -> GridPlan:
    """Every run of the sweep, in a stable order (family, budget, size); raise UserError when a
    budget selects no shape or every selected cell of a budget is rejected."""
    shapes = build_ladder(sweep.ladder)
    runs: list[RunSpec] = []
    rejected: list[Rejection] = []
    for choice in sweep.families:
        for index, budget in enumerate(sweep.budgets):
            cells = [build_cell(sweep, choice, budget, shape) for shape in shapes]
            chosen = select_cells(sweep, cells)
            if not chosen:
                raise _no_shape_error(sweep, index, cells)
            kept = []
            for cell in chosen:
                reason = _rejection_reason(cell, sweep)
                if reason is None:
                    kept.append(to_runspec(sweep, cell))
                else:
                    rejected.append(Rejection(choice.label, budget, cell.shape.tag, reason))
            if not kept:
                raise UserError(
                    f"sweep.budgets[{index}]: every selected shape of {choice.label} at {budget:.3g} "
                    f"FLOPs is rejected ({rejected[-1].reason})")
            runs.extend(kept)
    _check_whole_compile(runs)
    return GridPlan(tuple(runs), tuple(rejected))


def _check_whole_compile(runs: list[RunSpec]) -> None:
    """`compile: whole` (after the tiers) on a run of a family whose scored rows vary per step would
    recompile the model at every step (its chunked head loops over those rows): refuse it."""
    reached = [run for run in runs
               if run.resources.compile == "whole" and not get_entry(run.family).fixed_shapes]
    if reached:
        label = reached[0].label
        fixed = ", ".join(name for name, entry in FAMILIES.items() if entry.fixed_shapes)
        n_runs = sum(run.label == label for run in reached)
        raise UserError(
            f"compile: whole (resources.compile, or a tier's) reaches {n_runs} runs of {label!r}, "
            f"whose scored rows vary per step, so the model would recompile at every step; "
            f"compile: whole suits {fixed}: use trunk for {label} (a tier with `families:` sets "
            f"compile per family)")
