"""N*, D*, L* at a compute the sweep did not train, from planted laws."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.predict import predict_at
from analysis.report import prediction_line
from analysis.sweep import FitOptions, fit_sweep
from analysis.synthetic import make_parabola_runs

# make_parabola_runs' defaults: N* = 0.1 C^0.5, L* = 40 C^-0.05, budgets 1e18-1e21
TRUE_N = 0.1
TRUE_LOSS_COEF, TRUE_LOSS_EXP = 40.0, -0.05


def _fitted(noise: float, n_bootstrap: int, rng=3):
    flops, n, loss = make_parabola_runs(noise=noise, rng=rng)
    table = pd.DataFrame(dict(family="ar", flops=flops, n_params=n, tokens=flops / (6 * n), loss=loss))
    return fit_sweep(table, FitOptions(n_bootstrap=n_bootstrap)).groups[0]


def test_a_planted_law_is_answered_exactly_at_a_new_compute():
    p = predict_at(_fitted(noise=0.0, n_bootstrap=0), 1e23)
    assert p.n_params == pytest.approx(TRUE_N * 1e23**0.5, rel=1e-9)
    assert p.n_tokens == pytest.approx(1e23 / (6 * p.n_params), rel=1e-9)
    assert p.loss == pytest.approx(TRUE_LOSS_COEF * 1e23**TRUE_LOSS_EXP, rel=1e-9)
    assert p.extrapolation == pytest.approx(100.0)  # the largest budget is 1e21
    assert math.isnan(p.n_params_lo)  # no bootstrap, no interval


def test_the_intervals_come_from_each_resamples_law_and_cover_the_truth():
    """noise 0.01 nats, 200 resamples, 100x beyond the largest budget."""
    group = _fitted(noise=0.01, n_bootstrap=200)
    p = predict_at(group, 1e23)
    assert p.n_params_lo < TRUE_N * 1e23**0.5 < p.n_params_hi
    assert p.loss_lo < TRUE_LOSS_COEF * 1e23**TRUE_LOSS_EXP < p.loss_hi
    boot = group.isoflop_boot
    per_resample = boot.samples["n_params_coef"] * 1e23 ** boot.samples["a"]
    assert (p.n_params_lo, p.n_params_hi) == pytest.approx(tuple(np.percentile(per_resample, [2.5, 97.5])))
    inside = predict_at(group, 1e20)  # a trained budget: a narrower interval, no extrapolation
    assert inside.extrapolation < 1 and (inside.n_params_hi / inside.n_params_lo) < (p.n_params_hi / p.n_params_lo)


def test_a_group_without_an_iso_flop_law_says_so():
    flops, n, loss = make_parabola_runs(noise=0.0, rng=0)
    loss = 3.0 - 0.1 * np.log(n / n.min())  # monotone at every budget: no minimum anywhere
    table = pd.DataFrame(dict(family="duo", flops=flops, n_params=n, tokens=flops / (6 * n), loss=loss))
    group = fit_sweep(table, FitOptions(n_bootstrap=0)).groups[0]
    p = predict_at(group, 1e22)
    assert math.isnan(p.n_params) and math.isnan(p.loss)
    assert prediction_line(p).startswith("at 1e+22 FLOPs  duo  no approach-2 law")


def test_the_printed_line_names_the_extrapolation():
    line = prediction_line(predict_at(_fitted(noise=0.01, n_bootstrap=50), 1e23), width=4)
    assert line.startswith("at 1e+23 FLOPs  ar    N* 3.")
    assert "100x beyond the largest fitted budget" in line and "(approach 3: N* " in line
