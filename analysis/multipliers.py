"""Cross-family comparisons: compute multipliers, and a held-out check of the extrapolation.

Compute multiplier. Each family's frontier L*(C) = k C^c (approach 2) says what loss its best
model reaches with C FLOPs; inverted, C_X(L) = (L / k_X)^(1/c_X) is the compute family X needs to
reach loss L. The multiplier of X against a reference Y at loss L is C_X(L) / C_Y(L): 1.12 means
X needs 12% more FLOPs for the same loss. It is read only at losses both frontiers actually
reached (the overlap of their sampled L* ranges); outside it the number would be an extrapolation
of both laws, and no overlap raises FitError. Intervals pair the two families' bootstrap
resamples (independent data, so any pairing is a valid joint draw).

Held-out check. Refit approach 2 without the largest budget and predict that budget's optimum:
N* from the N*(C) law, L* from the L*(C) law; compare with the parabola vertex actually fitted at
that budget. This is how far one budget of extrapolation can be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import BootstrapSamples
from analysis.errors import FitError
from analysis.isoflop import IsoFlopFit, fit_isoflop

DEFAULT_LEVELS = 5  # loss levels across the overlap


@dataclass(frozen=True)
class Multiplier:
    """FLOPs family needs / FLOPs reference needs, at each loss level (nats/token)."""

    family: str
    reference: str
    loss: np.ndarray
    ratio: np.ndarray
    ratio_lo: np.ndarray  # percentile interval (NaN without bootstrap)
    ratio_hi: np.ndarray


def loss_range(fit: IsoFlopFit) -> tuple[float, float]:
    values = [o.loss for o in fit.optima]
    return min(values), max(values)


def compute_multiplier(
    fit: IsoFlopFit, reference: IsoFlopFit, *, boot: BootstrapSamples | None = None,
    reference_boot: BootstrapSamples | None = None, n_levels: int = DEFAULT_LEVELS, level: float = 0.95,
) -> Multiplier:
    """Multiplier of fit's family against reference's, at n_levels losses over the overlap."""
    lo_x, hi_x = loss_range(fit)
    lo_y, hi_y = loss_range(reference)
    lo, hi = max(lo_x, lo_y), min(hi_x, hi_y)
    if not lo <= hi:
        raise FitError(
            f"no overlap in reached loss: {fit.group} spans L* [{lo_x:.4g}, {hi_x:.4g}], "
            f"{reference.group} spans [{lo_y:.4g}, {hi_y:.4g}]; a multiplier would extrapolate",
            group=fit.group,
        )
    losses = np.geomspace(lo, hi, n_levels) if hi > lo else np.array([lo])
    ratio = fit.loss_law.solve_for_x(losses) / reference.loss_law.solve_for_x(losses)
    nan = np.full_like(losses, np.nan)
    ratio_lo, ratio_hi = nan, nan.copy()
    if boot is not None and reference_boot is not None:
        draws = _paired_ratios(boot, reference_boot, losses)
        if len(draws):
            tail = 100 * (1 - level) / 2
            ratio_lo, ratio_hi = np.percentile(draws, [tail, 100 - tail], axis=0)
    return Multiplier(fit.group, reference.group, losses, ratio, ratio_lo, ratio_hi)


def _paired_ratios(boot, reference_boot, losses):
    """C_X(L) / C_Y(L) for each pair of resamples (as many pairs as the smaller set has)."""
    n = min(len(boot.samples["loss_coef"]), len(reference_boot.samples["loss_coef"]))

    def flops_at(samples):
        coef, exponent = samples["loss_coef"][:n, None], samples["loss_exponent"][:n, None]
        return (losses[None] / coef) ** (1.0 / exponent)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        draws = flops_at(boot.samples) / flops_at(reference_boot.samples)
    return draws[np.all(np.isfinite(draws), axis=1)]


@dataclass(frozen=True)
class HeldOutCheck:
    """The largest budget's optimum predicted from the others, against its own vertex."""

    flops: float
    n_params_predicted: float
    n_params_observed: float
    loss_predicted: float
    loss_observed: float
    n_budgets_fitted: int

    @property
    def n_params_error(self) -> float:
        """Relative error of the predicted N* (0.1 = 10% too large)."""
        return self.n_params_predicted / self.n_params_observed - 1.0

    @property
    def loss_error(self) -> float:
        return self.loss_predicted / self.loss_observed - 1.0


def check_held_out(flops, n_params, loss, *, accept_edge=False, huber=False, group="", full=None) -> HeldOutCheck:
    """Fit approach 2 on all budgets but the largest; predict the largest's N* and L*.
    full: the all-budgets fit when the caller already has it."""
    flops, n_params, loss = (np.asarray(v, float) for v in (flops, n_params, loss))
    budgets = np.unique(flops)
    if len(budgets) < 3:
        raise FitError(f"held-out check: {len(budgets)} budget(s); needs >= 3 (2 to fit, 1 to predict)", group=group)
    kept = flops < budgets[-1]
    full = full or fit_isoflop(flops, n_params, loss, accept_edge=accept_edge, huber=huber, group=group)
    partial = fit_isoflop(flops[kept], n_params[kept], loss[kept], accept_edge=accept_edge, huber=huber, group=group)
    observed = full.optima[-1]
    return HeldOutCheck(
        flops=float(budgets[-1]),
        n_params_predicted=float(partial.n_params_law(budgets[-1])),
        n_params_observed=observed.n_params,
        loss_predicted=float(partial.loss_law(budgets[-1])),
        loss_observed=observed.loss,
        n_budgets_fitted=len(budgets) - 1,
    )
