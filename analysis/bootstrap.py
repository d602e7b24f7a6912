"""Bootstrap intervals for approaches 2 and 3: refit on resampled runs, read percentiles.

Approach 2 keeps each budget's design (the sizes were chosen, not sampled) and resamples noise,
refitting every budget's parabola for all resamples in one batched solve, then the power laws
through the resampled vertices. Two schemes:
- "residuals" (default): new losses = fitted parabola + residuals drawn from the group's pooled
  parabola residuals. Pooling (noise assumed equal across a group's budgets) gives the residuals
  n - 3 x budgets degrees of freedom instead of 2-6 per budget; they are inflated by
  sqrt(n / dof) (least squares shrinks residuals) and by t_dof / z at the interval's level (the
  noise scale is itself estimated: without it 95% intervals covered a planted exponent in
  89-93% of synthetic draws; with it 93-96%, 1,000 draws each at 5, 7 and 9 sizes per budget).
- "cases": resample runs within each budget. With 5-9 sizes a resample often keeps only 3-4
  distinct sizes on one side of the vertex, and those extrapolated vertices give heavy tails:
  intervals 2-4x wider than the estimator's spread (coverage 0.98, not 0.95, in the same draws).
A resample in which some budget's parabola is singular or opens downwards has no optimum; it is
dropped and counted in n_failed, never patched with the raw minimum. Edge vertices are kept.

Approach 3 resamples the points (with replacement, as Besiroglu et al. 2024): a resample is the
same as weighting each point by how often it was drawn, so all resamples share one batched
L-BFGS run. Each resample starts from the full-data optimum plus the few grid starts whose
full-data runs reached the best distinct optima (not the whole 4,500-point grid: a resample
moves the optimum by about one standard error, well inside the basin those starts cover); its
lowest end point is the estimate. The batched run uses float32 (end points within ~1e-4 relative
of the bottom, two orders below the bootstrap spread).

Intervals are percentile intervals at `level` (default 95%).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from analysis.errors import FitError
from analysis.isoflop import IsoFlopFit, fit_parabolas, fit_power_laws, robust_scale
from analysis.lbfgs import minimize_batch
from analysis.parametric import GridSearch, HuberProblem, drop_highest_loss

DEFAULT_LEVEL = 0.95
BOOTSTRAP_METHODS = ("residuals", "cases")
N_GRID_STARTS = 4  # grid starts per resample besides the full-data optimum


@dataclass(frozen=True)
class BootstrapSamples:
    """Resampled estimates: samples[name] has one entry (or row) per successful resample."""

    n_resamples: int
    n_failed: int
    samples: dict[str, np.ndarray] = field(repr=False)
    level: float = DEFAULT_LEVEL

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval (elementwise for per-budget samples); NaN when no resample survived."""
        return self.interval_of(self.samples[name])

    def interval_of(self, values: np.ndarray) -> tuple[float, float]:
        """The same interval for any quantity computed per resample (one entry or row each)."""
        values = np.asarray(values, float)
        if len(values) == 0:
            nan = np.full(values.shape[1:], np.nan)
            return (float(nan) if nan.ndim == 0 else nan,) * 2
        tail = 100.0 * (1.0 - self.level) / 2.0
        lo, hi = np.percentile(values, [tail, 100.0 - tail], axis=0)
        return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)

    def power_law_at(self, coef: str, exponent: str, flops) -> np.ndarray:
        """coef x flops ** exponent per resample (a row each when flops is an array). A resample
        of a few budgets can draw a wild exponent: its value overflows to inf (0 x inf: nan) far
        from the fitted range. Percentiles rank inf last and matplotlib leaves such points out, so
        numpy's RuntimeWarnings (printed in the middle of `make demo`'s output) are silenced."""
        flops = np.asarray(flops, float)
        k, a = self.samples[coef], self.samples[exponent]
        if flops.ndim:
            k, a = k[:, None], a[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            return k * flops ** a

    def se(self, name: str) -> float:
        values = self.samples[name]
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


# --- approach 2 -------------------------------------------------------------------------------


def pooled_residuals(fit: IsoFlopFit, budgets, level: float) -> np.ndarray:
    """The group's parabola residuals, centred and scaled for resampling (see module docstring)."""
    resid = np.concatenate([y - optimum.parabola.loss_at(np.exp(u + optimum.parabola.centre)) for optimum, u, y in budgets])
    dof = len(resid) - 3 * len(budgets)  # three coefficients per budget
    if dof < 1:
        raise FitError("approach 2 bootstrap: parabolas through exactly 3 sizes leave no residuals to resample; "
                       "sample more sizes per budget", group=fit.group)
    q = 1.0 - (1.0 - level) / 2.0
    inflate = np.sqrt(len(resid) / dof) * student_t.ppf(q, dof) / norm.ppf(q)
    return (resid - resid.mean()) * inflate


def bootstrap_isoflop(fit: IsoFlopFit, flops, n_params, loss, *, n_resamples=1000, rng=None, level=DEFAULT_LEVEL,
                      method="residuals"):
    """Approach-2 bootstrap; samples: a, b, loss_exponent, *_coef, and per budget (rows x
    budgets) n_params_opt, n_tokens_opt, loss_opt. Budgets follow fit.optima's order.
    method: "residuals" (default) or "cases" (resample runs within budgets)."""
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    rng = np.random.default_rng(rng)
    flops, n_params, loss = (np.asarray(v, float) for v in (flops, n_params, loss))
    budgets = [(o, np.log(n_params[flops == o.flops]) - o.parabola.centre, loss[flops == o.flops]) for o in fit.optima]
    noise = pooled_residuals(fit, budgets, level) if method == "residuals" else None
    log_n_opt, loss_opt = [], []
    for optimum, u, y in budgets:
        shape = (n_resamples, len(y))
        if method == "cases":
            weights = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=n_resamples).astype(float)
            draws = np.broadcast_to(y, shape)
        else:
            weights = np.ones(shape)
            draws = optimum.parabola.loss_at(np.exp(u + optimum.parabola.centre)) + rng.choice(noise, size=shape)
        scale = robust_scale(u, y) if fit.huber else None
        c0, c1, c2 = fit_parabolas(np.broadcast_to(u, shape), draws, weights, huber_scale=scale).T
        convex = c2 > 0  # NaN (singular) compares False too
        with np.errstate(divide="ignore", invalid="ignore"):
            log_n_opt.append(np.where(convex, optimum.parabola.centre - c1 / (2 * c2), np.nan))
            loss_opt.append(np.where(convex, c0 - c1**2 / (4 * c2), np.nan))
    log_n_opt, loss_opt = np.stack(log_n_opt, 1), np.stack(loss_opt, 1)
    ok = np.all(np.isfinite(log_n_opt), axis=1) & np.all(loss_opt > 0, axis=1)
    log_n_opt, loss_opt = log_n_opt[ok], loss_opt[ok]
    log_c = np.log([o.flops for o in fit.optima])
    log_d_opt = log_c - np.log(6.0) - log_n_opt
    samples = {"n_params_opt": np.exp(log_n_opt), "n_tokens_opt": np.exp(log_d_opt), "loss_opt": loss_opt}
    for name, coef_name, values in (
        ("a", "n_params_coef", log_n_opt), ("b", "n_tokens_coef", log_d_opt), ("loss_exponent", "loss_coef", np.log(loss_opt))
    ):
        coef, exponent = fit_power_laws(log_c, values) if len(values) else (np.empty(0), np.empty(0))
        samples[name], samples[coef_name] = exponent, coef
    return BootstrapSamples(n_resamples=n_resamples, n_failed=int((~ok).sum()), samples=samples, level=level)


# --- approach 3 -------------------------------------------------------------------------------


def bootstrap_parametric(
    n_params, n_tokens, loss, grid: GridSearch, *, drop_highest=0, n_resamples=1000, rng=None, level=DEFAULT_LEVEL
) -> BootstrapSamples:
    """Resample points (after dropping, as the fit did); samples: E, A, B, alpha, beta, a, b."""
    rng = np.random.default_rng(rng)
    n, d, l = drop_highest_loss(n_params, n_tokens, loss, drop_highest)
    counts = rng.multinomial(len(l), np.full(len(l), 1.0 / len(l)), size=n_resamples)
    starts = np.vstack([grid.fit.params[None], grid.starts[:N_GRID_STARTS]])
    x0 = np.tile(starts, (n_resamples, 1))
    resample_of_row = np.repeat(np.arange(n_resamples), len(starts))
    problem = HuberProblem(n, d, l, delta=grid.delta, weights=counts, weight_row=resample_of_row, dtype=np.float32)
    result = minimize_batch(problem, x0)
    fun = result.fun.reshape(n_resamples, len(starts))
    best = np.argmin(fun, axis=1)
    ok = np.isfinite(fun[np.arange(n_resamples), best])
    if not ok.any():
        raise FitError("approach 3 bootstrap: every resample diverged", group=grid.fit.group)
    x = result.x.reshape(n_resamples, len(starts), -1)[np.arange(n_resamples), best][ok]
    a, b, e, alpha, beta = x.T
    samples = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}
    samples["a"], samples["b"] = beta / (alpha + beta), alpha / (alpha + beta)
    return BootstrapSamples(n_resamples=n_resamples, n_failed=int((~ok).sum()), samples=samples, level=level)
