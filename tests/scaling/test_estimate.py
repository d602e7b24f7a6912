"""scaling/estimate.py: GPU-hours of a planned sweep from one throughput."""

from __future__ import annotations

import dataclasses

import pytest

from scaling import estimate
from scaling.grid import expand
from scaling.sweepfile import load_sweep


def test_gpu_hours_are_flops_over_throughput(repo):
    plan = expand(load_sweep(repo / "sweeps" / "paper.yaml"))
    tokens_per_second = 250_000.0
    hours = estimate.estimate_gpu_hours(plan, tokens_per_second)
    flops_per_second = tokens_per_second * estimate.reference_flops_per_token()
    for label in {spec.label for spec in plan.runs}:
        flops = sum(spec.achieved_flops for spec in plan.runs if spec.label == label)
        assert hours[label] == pytest.approx(flops / flops_per_second / 3600)
    assert hours["total"] == pytest.approx(sum(v for k, v in hours.items() if k != "total"))
    # Twice the throughput, half the hours; the default is the measured figure.
    assert estimate.estimate_gpu_hours(plan, 2 * tokens_per_second)["total"] == \
        pytest.approx(hours["total"] / 2)
    assert estimate.estimate_gpu_hours(plan)["total"] == pytest.approx(
        hours["total"] * tokens_per_second / estimate.MEASURED_TOKENS_PER_SECOND)


def test_mfu_of_the_reference_shape():
    # 6 N' per token, N' = 12 L d^2 + d K = 84,934,656 + 24,576,768 for 12 x 768, K = 32001.
    assert estimate.reference_flops_per_token() == 6 * (12 * 12 * 768**2 + 768 * 32001)
    assert estimate.model_flops_utilisation(1e6) == pytest.approx(6 * 109_511_424 * 1e6 / 989e12)


def test_each_convention_is_priced_in_its_own_flops(repo):
    # A run's FLOPs are counted in its sweep's convention, so the throughput must be too: with the
    # same runs counted as 6 N (N non-embedding, larger than N' at 113M), the FLOP/s grow with them.
    plan = expand(load_sweep(repo / "sweeps" / "paper.yaml"))
    assert {spec.flops_convention for spec in plan.runs} == {"paper"}
    six_n = dataclasses.replace(plan, runs=tuple(spec.model_copy(update={"flops_convention": "6n"})
                                                 for spec in plan.runs))
    ratio = estimate.reference_flops_per_token("6n") / estimate.reference_flops_per_token("paper")
    assert ratio > 1.0
    assert estimate.estimate_gpu_hours(six_n, 3e5)["total"] == pytest.approx(
        estimate.estimate_gpu_hours(plan, 3e5)["total"] / ratio)
    # "full" counts attention, causally as for AR (the family the default was measured on).
    n_layers, d_model = estimate.REFERENCE_SHAPE
    assert estimate.reference_flops_per_token("full") == pytest.approx(
        estimate.reference_flops_per_token("paper") + 3 * 2 * n_layers * estimate.REFERENCE_SEQ * d_model)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_throughput_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="finite number > 0"):
        estimate.resolve_tokens_per_second(bad)
    assert estimate.resolve_tokens_per_second(None) == estimate.MEASURED_TOKENS_PER_SECOND


# ---------------------------------------------------------------- wall-clock on a cluster

TPS = 1e5  # any throughput: the planted schedules are in units of one run's hours


def _runs(repo, *sizes):
    """Hand-made runs from one smoke run: (label, training FLOPs, workers, gpus_per_worker) each."""
    from scaling.schema import Resources

    plan = expand(load_sweep(repo / "sweeps" / "smoke.yaml"))
    runs = tuple(plan.runs[0].model_copy(update={
        "label": label, "achieved_flops": flops,
        "resources": Resources(workers=workers, gpus_per_worker=gpus_per_worker)})
        for label, flops, workers, gpus_per_worker in sizes)
    return dataclasses.replace(plan, runs=runs)


def _unit_hours(plan) -> float:
    """Hours of 1e15 FLOPs on one GPU."""
    return estimate.run_gpu_hours(plan.runs[0].model_copy(update={"achieved_flops": 1e15}), TPS)


def test_two_equal_runs_take_one_runs_time_on_two_gpus_and_twice_on_one(repo):
    plan = _runs(repo, ("a", 1e15, 1, 1.0), ("b", 1e15, 1, 1.0))
    unit = _unit_hours(plan)
    on_two, on_one = estimate.estimate_makespan(plan, 2, TPS), estimate.estimate_makespan(plan, 1, TPS)
    assert on_two.hours == pytest.approx(unit) and on_one.hours == pytest.approx(2 * unit)
    assert on_two.utilisation == pytest.approx(1.0) and on_one.utilisation == pytest.approx(1.0)
    # Ideal data parallelism: the same FLOPs on 2 workers x 1 GPU take half the time.
    assert estimate.estimate_makespan(_runs(repo, ("a", 1e15, 2, 1.0)), 2, TPS).hours == \
        pytest.approx(unit / 2)


def test_runs_start_in_order_without_backfill(repo):
    """Longest first (by FLOPs, as the runner orders them); b needs both GPUs and waits for a, and
    c waits behind b although one GPU is free beside a: 3 + 1 + 1 units, where backfill gives 4."""
    plan = _runs(repo, ("c", 1e15, 1, 1.0), ("b", 2e15, 2, 1.0), ("a", 3e15, 1, 1.0))
    unit = _unit_hours(plan)
    makespan = estimate.estimate_makespan(plan, 2, TPS)
    starts = [(run.run_id.split("-")[0], run.start_hours / unit, run.end_hours / unit)
              for run in makespan.schedule]
    assert starts == [("a", 0.0, pytest.approx(3.0)), ("b", pytest.approx(3.0), pytest.approx(4.0)),
                      ("c", pytest.approx(4.0), pytest.approx(5.0))]
    assert makespan.hours == pytest.approx(5 * unit)
    assert makespan.longest.run_id.startswith("a-") and makespan.longest.gpus == 1.0
    assert makespan.utilisation == pytest.approx(6 / 10)  # 6 GPU-units held of 2 GPUs x 5 units


@pytest.mark.parametrize("sizes, gpus, message", [
    ([("a", 1e15, 1, 1.0), ("b", 1e15, 4, 1.0)], 2,
     r"run b-\S+ needs 4 GPUs \(4 workers x 1\), more than the cluster's 2; estimate for --gpus 4"),
    ([("a", 1e15, 1, 0.5), ("b", 1e15, 3, 0.5)], 1, r"needs 1.5 GPUs .* --gpus 2 or more"),
    ([("a", 1e15, 1, 1.0), ("b", 1e15, 1, 0.0)], 8, r"run b-\S+ asks for no GPUs"),
    ([("a", 1e15, 1, 1.0)], 0, r"at least one GPU|>= 1, got 0"),
])
def test_a_cluster_that_cannot_hold_a_run_is_an_error_naming_it(repo, sizes, gpus, message):
    with pytest.raises(ValueError, match=message):
        estimate.estimate_makespan(_runs(repo, *sizes), gpus, TPS)


def test_paper_sweep_makespan_between_its_bounds(repo):
    plan = expand(load_sweep(repo / "sweeps" / "paper.yaml"))
    gpu_hours = estimate.estimate_gpu_hours(plan, TPS)["total"]
    # Every paper run takes 8 GPUs: on 8 they run one after another, on enough all at once.
    assert estimate.estimate_makespan(plan, 8, TPS).hours == pytest.approx(gpu_hours / 8)
    everything = estimate.estimate_makespan(plan, 8 * len(plan.runs), TPS)
    assert all(run.start_hours == 0.0 for run in everything.schedule)
    assert everything.hours == pytest.approx(everything.longest.hours)
    makespan = estimate.estimate_makespan(plan, 64, TPS)
    assert makespan.busy_gpu_hours == pytest.approx(gpu_hours)
    assert max(gpu_hours / 64, makespan.longest.hours) <= makespan.hours < gpu_hours / 64 + \
        makespan.longest.hours
    for run in makespan.schedule:  # never more GPUs in flight than the cluster has
        in_flight = [r for r in makespan.schedule if r.start_hours <= run.start_hours < r.end_hours]
        assert sum(r.gpus for r in in_flight) <= 64
