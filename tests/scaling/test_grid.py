"""Grid expansion: a snapshot of the smoke grid, stable ids, the 1% rounding rule, selection."""

from pathlib import Path

import pytest

from scaling.errors import UserError
from scaling.grid import MAX_ROUNDING_LOSS, expand
from scaling.plan import render_csv
from scaling.sweepfile import load_plan, parse_sweep, read_yaml

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "smoke_grid.csv"


def test_smoke_grid_matches_snapshot():
    """Regenerate deliberately, after checking the diff, with:
    .venv/bin/scaling plan sweeps/smoke.yaml --format csv > tests/scaling/snapshots/smoke_grid.csv"""
    _, plan = load_plan(REPO / "sweeps" / "smoke.yaml")
    assert render_csv(plan) == SNAPSHOT.read_text()


def test_same_yaml_same_ids_and_changed_recipe_new_ids():
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    ids_a = [s.run_id for s in expand(parse_sweep(raw)).runs]
    ids_b = [s.run_id for s in expand(parse_sweep(raw)).runs]
    assert ids_a == ids_b and len(set(ids_a)) == len(ids_a)
    changed = {**raw, "recipe": {**raw["recipe"], "lr_peak": 1e-3}}
    ids_c = [s.run_id for s in expand(parse_sweep(changed)).runs]
    assert not set(ids_a) & set(ids_c)
    moved = {**raw, "name": "elsewhere", "resources": {"cpus_per_worker": 2}}
    assert [s.run_id for s in expand(parse_sweep(moved)).runs] == ids_a  # placement is not identity


def test_resource_tiers_give_larger_runs_their_own_resources():
    """resources.tiers: each tier a run reaches applies over the sweep's resources, in order; the
    run ids stay the same (resources are not part of them)."""
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    tiered = {**raw, "resources": {**raw["resources"], "tiers": [
        {"min_n_params": 1e5, "workers": 2, "zero_stage": 1},
        {"min_n_params": 1.4e5, "min_flops_budget": 1.2e10, "workers": 4, "gpus_per_worker": 1},
    ]}}
    plain, specs = expand(parse_sweep(raw)).runs, expand(parse_sweep(tiered)).runs
    assert [s.run_id for s in specs] == [s.run_id for s in plain]
    placed = {(s.n_params, s.flops_budget, s.resources.workers, s.resources.zero_stage,
               s.resources.gpus_per_worker) for s in specs}
    assert placed == {(89584, 6e9, 1, 0, 0.0), (89584, 1.2e10, 1, 0, 0.0),
                      (114136, 6e9, 2, 1, 0.0), (114136, 1.2e10, 2, 1, 0.0),
                      (141760, 6e9, 2, 1, 0.0),  # below the second tier's budget
                      (141760, 1.2e10, 4, 1, 1.0)}
    assert all(s.resources.tiers == [] for s in specs)  # a run's spec holds its own resources


def test_a_tier_can_select_by_family_label():
    """resources.tiers[].families: a tier reaches only the runs of the labels it lists (as tables
    show them), and with a size threshold only that family's larger runs."""
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    tiered = {**raw, "resources": {**raw["resources"], "tiers": [
        {"families": ["mdlm-lowvar"], "workers": 2, "cpus_per_worker": 4},
        {"families": ["ar"], "min_n_params": 1.4e5, "workers": 4},
    ]}}
    placed = {(s.label, s.n_params, s.resources.workers, s.resources.cpus_per_worker)
              for s in expand(parse_sweep(tiered)).runs}
    assert placed == {("ar", 89584, 1, 1.0), ("ar", 114136, 1, 1.0), ("ar", 141760, 4, 1.0),
                      ("mdlm-lowvar", 89584, 2, 4.0), ("mdlm-lowvar", 114136, 2, 4.0),
                      ("mdlm-lowvar", 141760, 2, 4.0)}


@pytest.mark.parametrize("families, message", [
    (["ar", "mdlm-lowvr"], "sweep: resources.tiers[1].families[1]: 'mdlm-lowvr' is not a family label "
                           "of this sweep (ar, mdlm-lowvar); did you mean 'mdlm-lowvar'?"),
    (["mdlm"], "resources.tiers[1].families[0]: 'mdlm' is not a family label"),  # a family, not a label
    ([], "sweep.resources.tiers[1].families: list should have at least 1 item"),
])
def test_a_tier_family_that_is_not_a_label_fails_at_load(families, message):
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    tiers = [{"min_n_params": 1e5, "workers": 2}, {"families": families, "workers": 4}]
    with pytest.raises(UserError) as info:
        parse_sweep({**raw, "resources": {**raw["resources"], "tiers": tiers}})
    assert message in str(info.value)


def test_adding_a_budget_keeps_existing_ids():
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    before = {s.run_id for s in expand(parse_sweep(raw)).runs}
    after = {s.run_id for s in expand(parse_sweep({**raw, "budgets": [*raw["budgets"], 2.4e10]})).runs}
    assert before < after


def test_every_run_spends_its_budget_within_one_percent():
    _, plan = load_plan(REPO / "sweeps" / "paper.yaml")
    for spec in plan.runs:
        assert 1 - MAX_ROUNDING_LOSS <= spec.achieved_flops / spec.flops_budget <= 1
        assert spec.n_tokens == spec.steps * 256 * 2048


def test_paper_sweep_has_472m_at_1e20():
    _, plan = load_plan(REPO / "sweeps" / "paper.yaml")
    labels = {s.label for s in plan.runs}
    assert labels == {"ar", "mdlm-lowvar", "mdlm-nelbo", "duo", "esolm"}
    spec = next(s for s in plan.runs if s.label == "ar" and s.flops_budget == 1e20
                and s.shape.name == "472M")
    assert spec.steps == 80508
    assert spec.n_tokens == pytest.approx(42.2e9, rel=1e-3)
    assert spec.tokens_per_param == pytest.approx(102.1, abs=0.1)
    per_budget = {}
    for s in plan.runs:
        per_budget.setdefault((s.label, s.flops_budget), []).append(s)
    assert all(5 <= len(v) <= 9 for v in per_budget.values())


def test_around_optimum_selection_picks_k_nearest():
    raw = read_yaml(REPO / "sweeps" / "paper.yaml")
    raw["selection"] = {"mode": "around_optimum", "tokens_per_param_guess": 20, "k": 5}
    plan = expand(parse_sweep(raw))
    at_1e20 = [s for s in plan.runs if s.label == "ar" and s.flops_budget == 1e20]
    assert len(at_1e20) == 5
    assert any(s.tokens_per_param < 20 for s in at_1e20) and any(s.tokens_per_param > 20 for s in at_1e20)
