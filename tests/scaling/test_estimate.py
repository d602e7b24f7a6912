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
