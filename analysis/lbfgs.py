"""Batched L-BFGS: many small independent minimisations advanced together in numpy.

Hoffmann's approach 3 starts L-BFGS from 4,500 grid points; each problem has 5 parameters and a
few hundred data points, so a Python loop of scipy.optimize.minimize spends its time in per-call
overhead, not arithmetic. Here every start is one row of an (S, k) array: the objective is
evaluated for all rows at once (one vectorised numpy pass), the two-loop recursion runs on
(memory, S, k) history arrays, and a backtracking Armijo line search re-evaluates only the rows
whose step was not yet accepted. Rows leave the batch as soon as they converge, so the batch
shrinks as the easy starts finish.

Stopping rules are scipy L-BFGS-B's defaults, so a row stops where scipy would stop:
relative decrease (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol (factr 1e7 * machine eps), or
max |gradient| <= gtol (pgtol 1e-5). Pairs with non-positive curvature s.y are skipped (their
rho is 0, which removes them from the recursion) rather than corrupting the inverse Hessian.

The objective is `fun(x, rows) -> (f, grad)`: x has shape (n, k), rows holds the original row
index of each x (so a bootstrap can give each row its own data weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

SCIPY_FTOL = 1e7 * np.finfo(float).eps  # scipy L-BFGS-B default factr * eps = 2.2e-9
SCIPY_GTOL = 1e-5  # scipy L-BFGS-B default pgtol
ARMIJO_C1 = 1e-4  # sufficient-decrease constant used by Nocedal & Wright (Alg. 3.1)


@dataclass(frozen=True)
class BatchResult:
    """Final point of every row. converged is False for rows that hit max_iter or whose line
    search could not decrease f (both still hold the best point reached)."""

    x: np.ndarray
    fun: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


def _two_loop(grad, s_hist, y_hist, rho, gamma, newest, n_pairs):
    """Apply the L-BFGS inverse-Hessian approximation to grad, for every row at once."""
    memory = s_hist.shape[0]
    order = [(newest - j) % memory for j in range(n_pairs)]  # newest to oldest
    q = grad.copy()
    alphas = []
    for slot in order:
        alpha = rho[slot] * np.einsum("ij,ij->i", s_hist[slot], q)
        q -= alpha[:, None] * y_hist[slot]
        alphas.append(alpha)
    r = gamma[:, None] * q
    for slot, alpha in zip(reversed(order), reversed(alphas)):
        beta = rho[slot] * np.einsum("ij,ij->i", y_hist[slot], r)
        r += s_hist[slot] * (alpha - beta)[:, None]
    return r


def _sufficient_decrease(f_trial, g_trial, f0, step, slope):
    """Armijo's test, and a finite objective and gradient at the trial point."""
    target = f0 + ARMIJO_C1 * step * slope
    return np.isfinite(f_trial) & (f_trial <= target) & np.all(np.isfinite(g_trial), axis=1)


def _line_search(fun, rows, x, f, direction, slope, step, max_backtracks):
    """Backtracking Armijo search per row; the step shrinks by safeguarded quadratic
    interpolation (between 0.1x and 0.5x), the usual choice that needs no extra gradients.
    The first trial covers every row without fancy indexing (most rows accept it)."""
    x_new = x + step[:, None] * direction
    f_new, g_new = fun(x_new, rows)
    accepted = _sufficient_decrease(f_new, g_new, f, step, slope)
    pending = np.flatnonzero(~accepted)
    f_bad = f_new[pending]  # rejected rows' trial values, for the interpolation
    x_new[pending], f_new[pending], g_new[pending] = x[pending], f[pending], 0.0
    step = step.copy()
    for _ in range(max_backtracks):
        if pending.size == 0:
            break
        step_bad = step[pending]
        # minimiser of the quadratic through f(0), f'(0) and f(step); inf/nan trials just halve
        curve = f_bad - f[pending] - slope[pending] * step_bad
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t_quad = -slope[pending] * step_bad**2 / (2.0 * curve)
        t_quad = np.where(np.isfinite(t_quad), t_quad, 0.5 * step_bad)
        step[pending] = np.clip(t_quad, 0.1 * step_bad, 0.5 * step_bad)
        trial = x[pending] + step[pending, None] * direction[pending]
        f_trial, g_trial = fun(trial, rows[pending])
        ok = _sufficient_decrease(f_trial, g_trial, f[pending], step[pending], slope[pending])
        done = pending[ok]
        x_new[done], f_new[done], g_new[done] = trial[ok], f_trial[ok], g_trial[ok]
        accepted[done] = True
        pending, f_bad = pending[~ok], f_trial[~ok]
    return x_new, f_new, g_new, accepted


def _store_pair(slot, s, y, accepted, s_hist, y_hist, rho, gamma):
    """Write this step's (s, y) into the history slot, in place; a pair with s.y <= 0 (or a
    rejected step) gets rho = 0, which leaves it out of the recursion. Returns the good rows."""
    sy, yy = np.einsum("ij,ij->i", s, y), np.einsum("ij,ij->i", y, y)
    good = accepted & (sy > np.finfo(float).eps * yy) & (yy > 0)
    s_hist[slot], y_hist[slot] = s, y
    rho[slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
    gamma[good] = sy[good] / yy[good]
    return good


def minimize_batch(
    fun: Objective,
    x0: np.ndarray,
    *,
    memory: int = 10,
    ftol: float = SCIPY_FTOL,
    gtol: float = SCIPY_GTOL,
    max_iter: int = 1000,
    max_backtracks: int = 30,
) -> BatchResult:
    """Minimise fun independently from every row of x0 (shape (S, k))."""
    x = np.array(x0, dtype=float)
    n_rows, k = x.shape
    out_x, out_f = x.copy(), np.full(n_rows, np.inf)
    out_iter, out_conv = np.zeros(n_rows, dtype=int), np.zeros(n_rows, dtype=bool)
    rows = np.arange(n_rows)
    f, g = fun(x, rows)
    live = np.isfinite(f) & np.all(np.isfinite(g), axis=1)  # rows with a non-finite start are dropped
    out_f[~live] = np.inf
    rows, x, f, g = rows[live], x[live], f[live], g[live]
    s_hist = np.zeros((memory, rows.size, k))
    y_hist = np.zeros((memory, rows.size, k))
    rho = np.zeros((memory, rows.size))
    gamma = np.ones(rows.size)
    fresh = np.ones(rows.size, dtype=bool)  # no curvature pair yet: scale the first step
    for it in range(max_iter):
        if rows.size == 0:
            break
        newest = (it - 1) % memory
        direction = -_two_loop(g, s_hist, y_hist, rho, gamma, newest, min(it, memory))
        slope = np.einsum("ij,ij->i", g, direction)
        uphill = ~(slope < 0)  # lost descent: restart that row from steepest descent
        if uphill.any():
            direction[uphill] = -g[uphill]
            slope[uphill] = -np.einsum("ij,ij->i", g[uphill], g[uphill])
            rho[:, uphill], gamma[uphill], fresh[uphill] = 0.0, 1.0, True
        # scipy's first step is 1/||g||; later steps try the full quasi-Newton step
        step = np.where(fresh, np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-300)), 1.0)
        x_new, f_new, g_new, accepted = _line_search(fun, rows, x, f, direction, slope, step, max_backtracks)
        good = _store_pair(it % memory, x_new - x, g_new - g, accepted, s_hist, y_hist, rho, gamma)
        fresh &= ~good
        small_drop = (f - f_new) <= ftol * np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1.0)
        flat = np.max(np.abs(g_new), axis=1) <= gtol
        converged = accepted & (small_drop | flat)
        finished = converged | ~accepted
        g_new[~accepted] = g[~accepted]  # x_new, f_new already hold x, f for rejected rows
        x, f, g = x_new, f_new, g_new
        if finished.any():
            done = rows[finished]
            out_x[done], out_f[done], out_iter[done], out_conv[done] = x[finished], f[finished], it + 1, converged[finished]
            keep = ~finished
            rows, x, f, g = rows[keep], x[keep], f[keep], g[keep]
            s_hist, y_hist, rho = s_hist[:, keep], y_hist[:, keep], rho[:, keep]
            gamma, fresh = gamma[keep], fresh[keep]
    out_x[rows], out_f[rows], out_iter[rows] = x, f, max_iter  # rows that ran out of iterations
    return BatchResult(x=out_x, fun=out_f, n_iter=out_iter, converged=out_conv)
