"""Approach 2 (iso-FLOP profiles, Hoffmann et al. 2022 §3.2): the method the paper plots.

Each budget C trains several model sizes N at that fixed compute (D = C / 6N tokens each). The
loss against log N is U-shaped; a parabola L = c0 + c1 u + c2 u^2 in u = ln N - centre gives
the budget's optimum at its vertex: N* = exp(centre - c1 / 2c2), L* = c0 - c1^2 / 4c2 and
D* = C / (6 N*). Across budgets, the optima follow power laws fitted by least squares in log
space: N* = k C^a, D* = k' C^b (a + b = 1 when D* is derived this way) and L* = k'' C^c.

A fit either is trustworthy or raises FitError: fewer than 3 sizes at a budget (the parabola has
3 coefficients), curvature c2 <= 0 (no minimum), non-finite input, or a vertex outside the sampled
sizes (an extrapolated optimum; allowed with accept_edge=True, and then reported as a warning).
With drop_failed=True the budgets that fail are left out, each named in a warning, as long as
at least MIN_BUDGETS remain (published sweeps often sample their smallest budget too coarsely:
7 of Porian et al.'s 15 lose one to four budgets this way).

The parabola solver is batched over rows so a bootstrap fits all its resamples in one call; the
optional Huber fit is iteratively reweighted least squares with the classical k = 1.345 (95%
efficiency under Gaussian noise) and a scale estimated once per budget from the OLS residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import FitError

HUBER_K = 1.345  # Huber's tuning constant: 95% efficiency at the normal (Huber 1981)
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample / its standard deviation
IRLS_ITERATIONS = 50
MIN_SIZES_PER_BUDGET = 3  # three coefficients
MIN_BUDGETS = 2  # a power law has two
# A budget whose sizes span this many decades of N is wider than one parabola describes well
# (window_rows): its failure comes with a hint to fit near the minimum. The paper's and the demo's
# grids span under one decade; Porian et al.'s a median 1-2, up to 3.1.
WIDE_GRID_DEX = 1.5


@dataclass(frozen=True)
class Parabola:
    """loss = c0 + c1 u + c2 u^2 with u = ln(n_params) - centre."""

    centre: float
    c0: float
    c1: float
    c2: float

    @property
    def vertex_log_n(self) -> float:
        return self.centre - self.c1 / (2.0 * self.c2)

    @property
    def vertex_loss(self) -> float:
        return self.c0 - self.c1**2 / (4.0 * self.c2)

    def loss_at(self, n_params):
        u = np.log(np.asarray(n_params, float)) - self.centre
        return self.c0 + self.c1 * u + self.c2 * u**2


@dataclass(frozen=True)
class BudgetOptimum:
    """The vertex of one budget's parabola."""

    flops: float
    n_params: float  # N*
    n_tokens: float  # D* = C / (6 N*)
    loss: float  # L*
    parabola: Parabola
    n_runs: int
    n_params_min: float  # smallest and largest sampled size at this budget
    n_params_max: float
    at_edge: bool  # vertex outside [n_params_min, n_params_max] (only when accepted)

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x^exponent, fitted by least squares on (log x, log y)."""

    coef: float
    exponent: float
    n_points: int

    def __call__(self, x):
        return self.coef * np.asarray(x, float) ** self.exponent

    def solve_for_x(self, y):
        """The x at which the law reaches y (e.g. the FLOPs that reach a loss)."""
        return (np.asarray(y, float) / self.coef) ** (1.0 / self.exponent)


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2 for one group: per-budget optima and the power laws through them."""

    optima: tuple[BudgetOptimum, ...]
    n_params_law: PowerLaw  # N* = k C^a
    n_tokens_law: PowerLaw  # D* = k' C^b
    loss_law: PowerLaw  # L* = k'' C^c
    group: str = ""
    huber: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def a(self) -> float:
        return self.n_params_law.exponent

    @property
    def b(self) -> float:
        return self.n_tokens_law.exponent


# --- batched building blocks (rows = resamples) ---------------------------------------------


def solve_parabolas(u: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabolas, one per row: u, y, w of shape (R, n) -> (R, 3) (c0, c1, c2).

    Rows whose positive weights sit on fewer than 3 distinct sizes are singular and get NaN."""
    basis = np.stack([np.ones_like(u), u, u * u], axis=-1)  # (R, n, 3)
    normal = np.einsum("rn,rni,rnj->rij", w, basis, basis)
    rhs = np.einsum("rn,rni,rn->ri", w, basis, y)
    coefs = np.full(rhs.shape, np.nan)
    ok = _distinct_sizes(u, w) >= MIN_SIZES_PER_BUDGET
    if ok.any():
        coefs[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
    return coefs


def _distinct_sizes(u, w):
    """How many distinct sizes carry weight in each row (repeated sizes count once)."""
    order = np.argsort(u, axis=1)
    u_sorted = np.take_along_axis(u, order, 1)
    w_sorted = np.take_along_axis(w, order, 1) > 0
    # walk the sorted sizes; a weighted size is new if it differs from the last weighted one
    count = np.zeros(len(u), dtype=int)
    last = np.full(len(u), np.nan)
    for j in range(u.shape[1]):
        new = w_sorted[:, j] & ~np.isclose(u_sorted[:, j], last, rtol=0, atol=1e-12)
        count += new
        last = np.where(w_sorted[:, j], u_sorted[:, j], last)
    return count


def fit_parabolas(u, y, w, *, huber_scale=None) -> np.ndarray:
    """solve_parabolas, optionally made Huber-robust by IRLS with a fixed residual scale."""
    coefs = solve_parabolas(u, y, w)
    if huber_scale is None or huber_scale <= 0:
        return coefs
    for _ in range(IRLS_ITERATIONS):
        resid = y - (coefs[:, :1] + coefs[:, 1:2] * u + coefs[:, 2:3] * u * u)
        with np.errstate(divide="ignore", invalid="ignore"):
            robust = np.minimum(1.0, HUBER_K * huber_scale / np.abs(resid))
        new = solve_parabolas(u, y, w * np.nan_to_num(robust, nan=1.0))
        if np.allclose(new, coefs, rtol=1e-10, atol=1e-12, equal_nan=True):
            return new
        coefs = new
    return coefs


def robust_scale(u, y) -> float:
    """Residual scale of the OLS parabola (MAD-based, corrected for the 3 fitted coefficients)."""
    coefs = solve_parabolas(u[None], y[None], np.ones((1, len(u))))[0]
    resid = y - (coefs[0] + coefs[1] * u + coefs[2] * u * u)
    dof = max(len(u) - 3, 1)
    return float(MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid))) * np.sqrt(len(u) / dof))


def fit_power_laws(log_x: np.ndarray, log_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines log y = log k + p log x, one per row of log_y (R, n): returns (k, p)."""
    xm = log_x.mean()
    dx = log_x - xm
    slope = (log_y - log_y.mean(axis=1, keepdims=True)) @ dx / (dx @ dx)
    with np.errstate(over="ignore"):  # a wild bootstrap resample may overflow its coefficient
        return np.exp(log_y.mean(axis=1) - slope * xm), slope


# --- one group --------------------------------------------------------------------------------


def _check_finite(flops, n_params, loss, group):
    for name, values in (("flops", flops), ("n_params", n_params), ("loss", loss)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise FitError(f"approach 2: {name} is non-finite in {bad.sum()} runs", group=group)
        if name != "loss" and np.any(values <= 0):
            raise FitError(f"approach 2: {name} must be > 0", group=group)


def fit_budget(flops: float, n_params, loss, *, accept_edge=False, huber=False, group="") -> BudgetOptimum:
    """One budget's parabola and vertex; raises FitError when it cannot be trusted."""
    n_params, loss = np.asarray(n_params, float), np.asarray(loss, float)
    log_n = np.log(n_params)
    n_sizes = len(np.unique(np.round(log_n, 9)))
    if n_sizes < MIN_SIZES_PER_BUDGET:
        raise FitError(
            f"{len(loss)} runs at {n_sizes} distinct sizes; a parabola needs >= {MIN_SIZES_PER_BUDGET} sizes "
            "(if flops vary run to run, group them with a budget tolerance)",
            group=group, flops=flops,
        )
    centre = float(np.mean(np.unique(log_n)))
    u = log_n - centre
    scale = robust_scale(u, loss) if huber else None
    c0, c1, c2 = fit_parabolas(u[None], loss[None], np.ones((1, len(u))), huber_scale=scale)[0]
    if not c2 > 0:
        raise FitError(
            f"non-positive curvature (c2 = {c2:.3g}): loss does not rise on both sides of a minimum; "
            "sample sizes on both sides of the optimum", group=group, flops=flops,
        )
    parabola = Parabola(centre, float(c0), float(c1), float(c2))
    with np.errstate(over="ignore"):  # a near-flat parabola's vertex can lie at N* = inf: an edge, said below
        n_star = float(np.exp(parabola.vertex_log_n))
    lo, hi = float(n_params.min()), float(n_params.max())
    at_edge = not (lo <= n_star <= hi)
    if at_edge and not accept_edge:
        raise FitError(
            f"vertex N* = {n_star:.3g} lies outside the sampled sizes [{lo:.3g}, {hi:.3g}] (an extrapolation); "
            "add sizes beyond it or accept edge vertices (accept_edge=True, --accept-edge-vertex)",
            group=group, flops=flops,
        )
    return BudgetOptimum(
        flops=float(flops), n_params=n_star, n_tokens=float(flops) / (6.0 * n_star), loss=parabola.vertex_loss,
        parabola=parabola, n_runs=len(loss), n_params_min=lo, n_params_max=hi, at_edge=at_edge,
    )


def window_rows(flops, n_params, loss, dex: float) -> np.ndarray:
    """Mask of the runs within dex decades of N of their budget's lowest-loss run.

    A parabola in ln N describes an iso-FLOP curve near its minimum; over a wide grid (Porian et
    al.'s budgets span a median 1-2 decades, up to 3.1) the curve's asymmetric flanks dominate
    the fit and its residuals are model error. Fitting near the minimum keeps the vertex where the data put it
    and leaves residuals that are mostly noise. The window is chosen once, from the data, and
    kept fixed in the bootstrap (which therefore slightly understates the vertex's spread)."""
    flops, n_params, loss = (np.asarray(v, float) for v in (flops, n_params, loss))
    keep = np.zeros(len(flops), dtype=bool)
    for c in np.unique(flops):
        rows = flops == c
        best = n_params[rows][np.argmin(loss[rows])]
        keep |= rows & (np.abs(np.log10(n_params / best)) <= dex + 1e-12)
    return keep


def power_laws_through(optima, group="") -> tuple[PowerLaw, PowerLaw, PowerLaw]:
    """N*(C), D*(C), L*(C) power laws through the budgets' optima."""
    if len(optima) < MIN_BUDGETS:
        raise FitError(f"approach 2: {len(optima)} budget(s); a power law in C needs >= {MIN_BUDGETS}", group=group)
    log_c = np.log([o.flops for o in optima])
    laws = []
    for attr in ("n_params", "n_tokens", "loss"):
        values = np.array([getattr(o, attr) for o in optima])
        if np.any(values <= 0):
            raise FitError(f"approach 2: {attr} optimum <= 0 cannot be fitted in log space", group=group)
        k, p = fit_power_laws(log_c, np.log(values)[None])
        laws.append(PowerLaw(coef=float(k[0]), exponent=float(p[0]), n_points=len(optima)))
    return tuple(laws)


def _wide_grid_hint(failures, flops, n_params) -> str:
    """For failed budgets whose sizes span >= WIDE_GRID_DEX decades: how wide, and the option that
    fits near each minimum instead (empty when none is that wide)."""
    spans = {e.flops: float(np.log10(n.max() / n.min())) for e in failures
             if len(n := n_params[flops == e.flops])}
    wide = {c: span for c, span in spans.items() if span >= WIDE_GRID_DEX}
    if not wide:
        return ""
    return (f"Failed budgets {', '.join(f'{c:.3g}' for c in wide)} have sizes spanning "
            f"{', '.join(f'{span:.1f}' for span in wide.values())} decades of N, wider than one "
            "parabola describes: fit each near its lowest loss with parabola_window_dex / "
            "--parabola-window DEX (e.g. 0.6)")


def fit_isoflop(flops, n_params, loss, *, accept_edge=False, huber=False, drop_failed=False, group="") -> IsoFlopFit:
    """Approach 2 for one group. flops are the runs' budgets (equal within a budget)."""
    flops, n_params, loss = (np.asarray(v, float) for v in (flops, n_params, loss))
    _check_finite(flops, n_params, loss, group)
    budgets = np.unique(flops)
    if len(budgets) < MIN_BUDGETS:
        raise FitError(f"approach 2: {len(budgets)} budget(s); a power law in C needs >= {MIN_BUDGETS}", group=group)
    sizes = [len(np.unique(n_params[flops == c])) for c in budgets]
    if max(sizes) < MIN_SIZES_PER_BUDGET:
        raise FitError(
            f"approach 2: no budget has >= {MIN_SIZES_PER_BUDGET} sizes ({len(budgets)} distinct flops over "
            f"{len(flops)} runs): these runs are not iso-FLOP groups; snap noisy FLOPs to budgets "
            "(--budget-tolerance DEX and/or --budgets LIST)", group=group,
        )
    optima, failures = [], []
    for c in budgets:  # every budget is tried, so one error names all that failed, not the first
        try:
            optima.append(fit_budget(c, n_params[flops == c], loss[flops == c], accept_edge=accept_edge,
                                     huber=huber, group=group))
        except FitError as exc:
            failures.append(exc)
    enough = len(optima) >= MIN_BUDGETS
    wide = _wide_grid_hint(failures, flops, n_params)
    if failures and not (drop_failed and enough):
        fitted = [f"{o.flops:.3g}" for o in optima]
        hint = (f". Budgets {', '.join(fitted)} have a trusted minimum: fit them alone with --budgets "
                f"{','.join(fitted)}, or leave the others out (drop_failed=True, --drop-failed-budgets)"
                if enough else "")
        if len(failures) == 1 and not hint and not wide:
            raise failures[0]
        raise FitError("approach 2: " + "; ".join(f"budget {e.flops:.3g}: {e.reason}" for e in failures)
                       + hint + (f". {wide}" if wide else ""), group=group)
    optima = tuple(optima)
    dropped = tuple(f"group {group}: budget {e.flops:.3g} FLOPs left out of approach 2: {e.reason}" for e in failures)
    dropped += (f"group {group}: {wide}",) if wide else ()
    warnings = dropped + tuple(
        f"group {group}: budget {o.flops:.3g} FLOPs: vertex N* = {o.n_params:.3g} outside sampled sizes "
        f"[{o.n_params_min:.3g}, {o.n_params_max:.3g}] (extrapolated, accepted)"
        for o in optima if o.at_edge
    )
    n_law, d_law, l_law = power_laws_through(optima, group)
    return IsoFlopFit(optima, n_law, d_law, l_law, group=group, huber=huber, warnings=warnings)
