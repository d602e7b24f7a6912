"""One call from a canonical runs table to every fit: fit_sweep(df, FitOptions()) -> SweepResult.

Per group (family by default): approach 1 (envelope), approach 2 (iso-FLOP parabolas and power
laws, bootstrap), approach 3 (Hoffmann's parametric fit, bootstrap) and the held-out check; then
compute multipliers of every group against a reference group. Each approach fails on its own: a
FitError is recorded as that group's error (the others still run), so one bad budget does not
hide the rest of a sweep, and the caller (the CLI) decides the exit status. Bootstrap streams are
seeded per group and per approach, so adding a group does not change another group's intervals.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.bootstrap import BootstrapSamples, bootstrap_isoflop, bootstrap_parametric
from analysis.envelope import EnvelopeFit, fit_envelope
from analysis.errors import FitError
from analysis.isoflop import IsoFlopFit, fit_isoflop, window_rows
from analysis.multipliers import HeldOutCheck, Multiplier, check_held_out, compute_multiplier
from analysis.parametric import ParametricFit, fit_parametric_grid
from analysis.table import assign_budgets, split_groups


@dataclass(frozen=True)
class FitOptions:
    group_by: tuple[str, ...] | None = None  # None: by family when the table has one
    drop_highest: int = 0  # approach 3 leaves out the K highest-loss points of each group
    n_bootstrap: int = 200  # resamples per approach; 0 turns the bootstrap off
    bootstrap_method: str = "residuals"  # approach 2: "residuals" or "cases" (analysis.bootstrap)
    seed: int = 0
    accept_edge: bool = False  # accept parabola vertices outside the sampled sizes (warned)
    accept_boundary: bool = False  # accept approach-3 optima on the law's boundary (warned)
    drop_failed_budgets: bool = False  # approach 2 leaves out budgets whose parabola fails (warned)
    parabola_window_dex: float | None = None  # approach 2 fits sizes within this many decades of each budget's best
    huber: bool = False  # Huber-robust parabolas
    budget_tolerance_dex: float = 0.0  # group noisy flops into budgets (see table.assign_budgets)
    budgets: tuple[float, ...] | None = None  # nominal budget centres to snap flops to
    reference: str | None = None  # multipliers are against this group (default: the first)
    level: float = 0.95


@dataclass(frozen=True)
class GroupResult:
    label: str
    key: dict = field(repr=False)
    points: pd.DataFrame = field(repr=False)  # canonical rows with their budget
    envelope: EnvelopeFit | None = None
    isoflop: IsoFlopFit | None = None
    isoflop_boot: BootstrapSamples | None = None
    parametric: ParametricFit | None = None
    parametric_boot: BootstrapSamples | None = None
    holdout: HeldOutCheck | None = None
    errors: tuple[str, ...] = ()  # a fit that failed (FitError message)
    warnings: tuple[str, ...] = ()  # accepted edges and boundary fits, left-out budgets and runs, skew
    notes: tuple[str, ...] = ()  # diagnostics that could not be computed (e.g. too few budgets)


@dataclass(frozen=True)
class SweepResult:
    groups: tuple[GroupResult, ...]
    multipliers: tuple[Multiplier, ...]
    notes: tuple[str, ...] = ()

    @property
    def errors(self) -> list[str]:
        return [e for g in self.groups for e in g.errors]

    @property
    def warnings(self) -> list[str]:
        return [w for g in self.groups for w in g.warnings]


def _attempt(fn, errors: list, label: str):
    """fn() or None, with its FitError (labelled with the group) appended to errors."""
    try:
        return fn()
    except FitError as exc:
        errors.append(str(exc.with_group(label) if not exc.group else exc))
        return None


def skewed_interval_warnings(label: str, boot: BootstrapSamples, estimates: dict[str, float]) -> list[str]:
    """A percentile interval that misses its own estimate: the resamples are skewed, so it is not
    a confidence interval. On Porian et al.'s wide grids (a median 1-2 decades of N per budget)
    the parabola misfits, its residuals are model error more than noise, and 18-64% of 200
    residual resamples lose a minimum at some budget. With 50 resamples one sweep's interval missed its estimate
    (0.663 against [0.408, 0.658]); with 200, none did."""
    found = []
    for name, value in estimates.items():
        lo, hi = boot.interval(name)
        if np.isfinite(lo) and not lo <= value <= hi:
            found.append(f"group {label}: approach 2 bootstrap: {name} = {value:.3f} lies outside its "
                         f"{100 * boot.level:.0f}% interval [{lo:.3f}, {hi:.3f}]: the resamples are skewed, so the "
                         "interval is not a confidence interval (try --bootstrap-method cases, or sizes nearer "
                         "each budget's optimum)")
    return found


# Columns of a sweep's results table whose mixture within one group shifts losses systematically
# (bf16 against fp32: 0.05 nats on the CPU smoke grid's AR, benchmarks/GPU_NOTES.md). Not the
# device: two GPU models at one precision differ by rounding, not by a shift.
SETUP_COLUMNS = ("precision",)


def mixed_setup_warnings(label: str, rows: pd.DataFrame) -> list[str]:
    """A warning per setup column whose values differ within the group's runs."""
    found = []
    for column in SETUP_COLUMNS:
        if column not in rows:
            continue
        counts = rows[column].dropna().astype(str).value_counts()
        if len(counts) > 1:
            mix = ", ".join(f"{value} {count}" for value, count in sorted(counts.items()))
            found.append(f"group {label}: its runs trained on mixed {column} ({mix} runs); their "
                         f"losses are not on one footing: fit them apart with --group-by "
                         f"family,{column}, or retrain on one setup")
    return found


def fit_group(label: str, key: dict, rows: pd.DataFrame, options: FitOptions, stream: int) -> GroupResult:
    """Every approach on one group's rows (which carry a `budget` column)."""
    errors, notes = [], []
    warnings = mixed_setup_warnings(label, rows)
    on_budget = rows[np.isfinite(rows["budget"])]
    if len(on_budget) < len(rows):
        warnings.append(f"group {label}: {len(rows) - len(on_budget)} runs match no budget; "
                        "approaches 1-2 leave them out")
    c, n, d, l = (on_budget[k].to_numpy(float) for k in ("budget", "n_params", "tokens", "loss"))
    shape = dict(accept_edge=options.accept_edge, huber=options.huber, group=label)
    envelope = _attempt(lambda: fit_envelope(c, n, d, l, group=label), errors, label)
    if options.parabola_window_dex is not None:
        near = window_rows(c, n, l, options.parabola_window_dex)
        c, n, l = c[near], n[near], l[near]
    isoflop = _attempt(lambda: fit_isoflop(c, n, l, drop_failed=options.drop_failed_budgets, **shape), errors, label)
    iso_boot = holdout = None
    if isoflop is not None:
        warnings.extend(isoflop.warnings)
        fitted = np.isin(c, [o.flops for o in isoflop.optima])  # all, unless budgets were left out
        c, n, l = c[fitted], n[fitted], l[fitted]
        if options.n_bootstrap:
            rng = np.random.default_rng([options.seed, stream, 2])
            iso_boot = _attempt(
                lambda: bootstrap_isoflop(isoflop, c, n, l, n_resamples=options.n_bootstrap, rng=rng,
                                          level=options.level, method=options.bootstrap_method),
                errors, label,
            )
            if iso_boot is not None and iso_boot.n_failed:
                warnings.append(f"group {label}: approach 2 bootstrap: {iso_boot.n_failed} of {iso_boot.n_resamples} "
                                "resamples had no optimum at some budget and were dropped")
            if iso_boot is not None:
                # b = 1 - a in every resample, so a stands for both
                warnings.extend(skewed_interval_warnings(
                    label, iso_boot, {"a": isoflop.a, "loss_exponent": isoflop.loss_law.exponent}))
        holdout = _attempt(lambda: check_held_out(c, n, l, full=isoflop, **shape), notes, label)
    n_all, d_all, l_all = (rows[k].to_numpy(float) for k in ("n_params", "tokens", "loss"))
    grid = _attempt(
        lambda: fit_parametric_grid(n_all, d_all, l_all, drop_highest=options.drop_highest, group=label,
                                    accept_boundary=options.accept_boundary),
        errors, label,
    )
    if grid is not None:
        warnings.extend(grid.fit.warnings)
    par_boot = None
    if grid is not None and options.n_bootstrap:
        rng = np.random.default_rng([options.seed, stream, 3])
        par_boot = _attempt(
            lambda: bootstrap_parametric(n_all, d_all, l_all, grid, drop_highest=options.drop_highest,
                                         n_resamples=options.n_bootstrap, rng=rng, level=options.level),
            errors, label,
        )
    return GroupResult(
        label, key, rows, envelope, isoflop, iso_boot, grid.fit if grid else None, par_boot, holdout,
        tuple(errors), tuple(warnings), tuple(notes),
    )


def fit_sweep(df: pd.DataFrame, options: FitOptions = FitOptions()) -> SweepResult:
    """All fits for every group of a canonical runs table (see analysis.table.load_runs)."""
    df = df.assign(budget=assign_budgets(df["flops"], tolerance_dex=options.budget_tolerance_dex, centres=options.budgets))
    group_by = list(options.group_by) if options.group_by is not None else None
    # each group's random stream is keyed by its label, not its position among the groups
    groups = tuple(
        fit_group(label, key, rows, options, zlib.crc32(label.encode()))
        for label, key, rows in split_groups(df, group_by)
    )
    multipliers, notes = compute_all_multipliers(groups, options)
    return SweepResult(groups, tuple(multipliers), tuple(notes))


def compute_all_multipliers(groups, options: FitOptions) -> tuple[list[Multiplier], list[str]]:
    """Every fitted group against the reference group."""
    fitted = {g.label: g for g in groups if g.isoflop is not None}
    if len(fitted) < 2:
        return [], []
    reference = options.reference or next(iter(fitted))
    if reference not in fitted:
        return [], [f"multipliers: reference group {reference!r} has no approach-2 fit; choose one of {', '.join(fitted)}"]
    ref = fitted[reference]
    multipliers, notes = [], []
    for label, group in fitted.items():
        if label == reference:
            continue
        found = _attempt(
            lambda: compute_multiplier(group.isoflop, ref.isoflop, boot=group.isoflop_boot,
                                       reference_boot=ref.isoflop_boot, level=options.level),
            notes, label,
        )
        if found is not None:
            multipliers.append(found)
    return multipliers, notes
