"""scaling/estimate.py: GPU-hours of a planned sweep from one throughput."""

from __future__ import annotations

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
