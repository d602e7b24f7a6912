"""Planted-truth sweeps: results tables generated from a known law, for tests and sanity checks.

make_sweep_table draws losses from Hoffmann's surface L = E + A/N^alpha + B/D^beta (plus Gaussian
noise) at iso-FLOP budgets, with sizes log-spaced around the surface's compute-optimal N, in the
column layout `scaling run` writes. make_parabola_runs plants exact parabolas in ln N whose
vertices follow N* = k C^a, so approach 2's model is true and only the noise is left: the
setting in which a bootstrap interval should cover a at its nominal rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.parametric import ParametricFit


@dataclass(frozen=True)
class Surface:
    """A planted L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def as_fit(self) -> ParametricFit:
        return ParametricFit(self.E, self.A, self.B, self.alpha, self.beta, objective=0.0, n_points=0, n_dropped=0, n_starts=0)


# Besiroglu et al.'s fit of Hoffmann's data: a realistic surface to plant.
CHINCHILLA_SURFACE = Surface(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)


def make_sweep_table(
    surfaces: dict[str, Surface], budgets=(1e18, 1e19, 1e20), *, n_sizes=5, span_dex=0.6,
    noise=0.005, seed=0, sweep="synthetic",
) -> pd.DataFrame:
    """A results table (one row per run) like `scaling run` writes, losses from the surfaces."""
    rng = np.random.default_rng(seed)
    rows = []
    for family, surface in surfaces.items():
        for flops in budgets:
            n_opt, _ = surface.as_fit().compute_optimal(flops)
            for n_params in np.logspace(-span_dex / 2, span_dex / 2, n_sizes) * n_opt:
                n_tokens = flops / (6.0 * n_params)
                loss = float(surface.as_fit().predict_loss(n_params, n_tokens)) + rng.normal(0.0, noise)
                rows.append(dict(
                    run_id=f"{family}-{flops:.0e}-{n_params:.3g}", sweep=sweep, family=family,
                    flops_budget=flops, achieved_flops=flops, n_params=n_params, n_tokens=n_tokens,
                    tokens_per_param=n_tokens / n_params, val_loss=loss, train_loss=loss, status="done",
                ))
    return pd.DataFrame(rows)


def make_parabola_runs(
    budgets=(1e18, 1e19, 1e20, 1e21), *, coef=0.1, exponent=0.5, loss_coef=40.0, loss_exponent=-0.05,
    curvature=0.05, n_sizes=7, span_dex=1.0, noise=0.01, rng=None,
):
    """(flops, n_params, loss) with loss = L*(C) + curvature (ln N - ln N*(C))^2 + noise and
    N*(C) = coef C^exponent, L*(C) = loss_coef C^loss_exponent; sizes log-spaced over span_dex
    decades, the grid shifted randomly by up to a quarter span so vertices are not always centred."""
    rng = np.random.default_rng(rng)
    flops, n_params, loss = [], [], []
    for c in budgets:
        n_star = coef * c**exponent
        shift = rng.uniform(-0.25, 0.25) * span_dex
        sizes = n_star * np.logspace(-span_dex / 2 + shift, span_dex / 2 + shift, n_sizes)
        values = loss_coef * c**loss_exponent + curvature * np.log(sizes / n_star) ** 2
        flops.extend([c] * n_sizes)
        n_params.extend(sizes)
        loss.extend(values + rng.normal(0.0, noise, n_sizes))
    return np.array(flops), np.array(n_params), np.array(loss)
