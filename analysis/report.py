"""Fit results as tables (CSV, Markdown) and JSON records: the side effects at the edge.

Three tables per sweep: `fits` (one row per group: exponents with intervals for approaches 1-3,
the parametric law with bootstrap standard errors, the held-out check), `optima` (one row per
group and budget: the approach-2 vertex with its interval and approach 3's closed-form optimum)
and `multipliers` (one row per group and loss level); with `at` (computes to answer for), a
fourth, `predictions` (one row per group and compute: N*, D*, L* with intervals, approach 3's
allocation, how far it extrapolates). Column names carry units and roles.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.predict import predict_at
from analysis.sweep import GroupResult, SweepResult

PARAMETRIC_NAMES = ("E", "A", "B", "alpha", "beta")


def _interval(boot, name, row, prefix=""):
    if boot is not None and len(boot.samples.get(name, ())):
        row[f"{prefix}{name}_lo"], row[f"{prefix}{name}_hi"] = boot.interval(name)
    else:
        row[f"{prefix}{name}_lo"] = row[f"{prefix}{name}_hi"] = math.nan


def group_row(g: GroupResult) -> dict:
    """One group's headline numbers (NaN where a fit failed)."""
    row = dict(g.key)
    row.update(group=g.label, n_runs=len(g.points), n_budgets=int(g.points["budget"].nunique()))
    iso, boot = g.isoflop, g.isoflop_boot
    row["n_budgets_fitted"] = len(iso.optima) if iso else 0  # approach 2's, after any left out
    row["a"], row["b"] = (iso.a, iso.b) if iso else (math.nan, math.nan)
    _interval(boot, "a", row)
    _interval(boot, "b", row)
    row["loss_exponent"] = iso.loss_law.exponent if iso else math.nan
    _interval(boot, "loss_exponent", row)
    row["n_params_coef"] = iso.n_params_law.coef if iso else math.nan
    row["n_tokens_coef"] = iso.n_tokens_law.coef if iso else math.nan
    row["loss_coef"] = iso.loss_law.coef if iso else math.nan
    row["n_bootstrap_failed"] = boot.n_failed if boot else 0
    row["a_envelope"], row["b_envelope"] = (g.envelope.a, g.envelope.b) if g.envelope else (math.nan, math.nan)
    fit, pboot = g.parametric, g.parametric_boot
    for name in PARAMETRIC_NAMES:
        row[name] = getattr(fit, name) if fit else math.nan
        row[f"{name}_se"] = pboot.se(name) if pboot else math.nan
        _interval(pboot, name, row)
    row["a_parametric"] = fit.a if fit else math.nan
    _interval(pboot, "a", row, prefix="parametric_")
    row["b_parametric"] = fit.b if fit else math.nan
    row["huber_objective"] = fit.objective if fit else math.nan
    row["n_points_parametric"] = fit.n_points if fit else 0
    row["n_dropped_parametric"] = fit.n_dropped if fit else 0
    h = g.holdout
    row["heldout_flops"] = h.flops if h else math.nan
    row["heldout_n_params_error"] = h.n_params_error if h else math.nan
    row["heldout_loss_error"] = h.loss_error if h else math.nan
    row["errors"] = " | ".join(g.errors)
    return row


def fits_table(result: SweepResult) -> pd.DataFrame:
    return pd.DataFrame([group_row(g) for g in result.groups])


def optima_rows(g: GroupResult) -> list[dict]:
    if g.isoflop is None:
        return []
    boot = g.isoflop_boot
    intervals = {name: boot.interval(name) for name in ("n_params_opt", "n_tokens_opt", "loss_opt")} if boot else {}
    rows = []
    for i, o in enumerate(g.isoflop.optima):
        row = dict(g.key)
        row.update(group=g.label, flops=o.flops, n_runs=o.n_runs, n_params_opt=o.n_params, n_tokens_opt=o.n_tokens,
                   loss_opt=o.loss, tokens_per_param=o.tokens_per_param, at_edge=o.at_edge)
        for name in ("n_params_opt", "n_tokens_opt", "loss_opt"):
            lo_hi = intervals.get(name)
            row[f"{name}_lo"], row[f"{name}_hi"] = (float(lo_hi[0][i]), float(lo_hi[1][i])) if lo_hi else (math.nan, math.nan)
        n3, d3 = g.parametric.compute_optimal(o.flops) if g.parametric else (math.nan, math.nan)
        row["n_params_opt_parametric"], row["n_tokens_opt_parametric"] = float(n3), float(d3)
        rows.append(row)
    return rows


def optima_table(result: SweepResult) -> pd.DataFrame:
    return pd.DataFrame([row for g in result.groups for row in optima_rows(g)])


def multipliers_table(result: SweepResult) -> pd.DataFrame:
    rows = [
        dict(group=m.family, reference=m.reference, loss=float(l), flops_ratio=float(r),
             flops_ratio_lo=float(lo), flops_ratio_hi=float(hi))
        for m in result.multipliers
        for l, r, lo, hi in zip(m.loss, m.ratio, m.ratio_lo, m.ratio_hi)
    ]
    return pd.DataFrame(rows, columns=["group", "reference", "loss", "flops_ratio", "flops_ratio_lo", "flops_ratio_hi"])


def predictions_table(result: SweepResult, at=()) -> pd.DataFrame:
    rows = []
    for flops in at:
        for g in result.groups:
            p = predict_at(g, flops)
            rows.append(dict(g.key) | asdict(p) | {"tokens_per_param": p.tokens_per_param})
    return pd.DataFrame(rows)


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_records(result: SweepResult, at=()) -> list[dict]:
    """One object per group: its column values, the headline numbers, optima, multipliers, and the
    predictions at the computes `at`."""
    optima = optima_table(result)
    mults = multipliers_table(result)
    predictions = predictions_table(result, at)
    records = []
    for g in result.groups:
        record = {k: _clean(v) for k, v in group_row(g).items() if k != "errors"}
        record["errors"], record["warnings"], record["notes"] = list(g.errors), list(g.warnings), list(g.notes)
        rows = optima[optima["group"] == g.label] if len(optima) else optima
        record["optima"] = [
            {k: _clean(v) for k, v in r.items() if k not in g.key and k != "group"} for r in rows.to_dict("records")
        ]
        mine = mults[mults["group"] == g.label]
        record["multipliers"] = [{k: _clean(v) for k, v in r.items() if k != "group"} for r in mine.to_dict("records")]
        if len(predictions):
            ours = predictions[predictions["group"] == g.label]
            record["predictions"] = [{k: _clean(v) for k, v in r.items() if k not in g.key and k != "group"}
                                     for r in ours.to_dict("records")]
        records.append(record)
    return records


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; numbers to 4 significant digits."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_tables(result: SweepResult, out_dir: Path, at=()) -> list[Path]:
    """fits, optima, multipliers (and predictions at the computes `at`) as CSV and Markdown under
    out_dir (a folder, or a run store's URL: scaling/storage.py), plus fits.json; returns the paths."""
    from scaling.storage import location

    out_dir = location(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    tables = {"fits": fits_table(result), "optima": optima_table(result), "multipliers": multipliers_table(result)}
    if at:
        tables["predictions"] = predictions_table(result, at)
    else:  # a predictions table left by an earlier --at would not match these fits
        for stale in (out_dir / "predictions.csv", out_dir / "predictions.md"):
            stale.unlink(missing_ok=True)
    for name, table in tables.items():
        (out_dir / f"{name}.csv").write_text(table.to_csv(index=False))
        (out_dir / f"{name}.md").write_text(to_markdown(table))
        paths += [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
    (out_dir / "fits.json").write_text(json.dumps(json_records(result, at), indent=1))
    return paths + [out_dir / "fits.json"]


def summary_lines(result: SweepResult, at=()) -> list[str]:
    """The readable table the CLI prints: one line per group, then multipliers, held-out checks and
    a line per group and compute in `at`."""
    width = max([len("group")] + [len(g.label) for g in result.groups])
    lines = [f"{'group':<{width}} {'runs':>4} {'budgets':>7}  {'a (N*~C^a) [95%]':<24} {'b (D*~C^b) [95%]':<24} "
             f"{'E':>7} {'A':>9} {'B':>9} {'alpha':>6} {'beta':>6} {'a3':>6}"]
    for row in map(group_row, result.groups):
        def est(name):
            if not math.isfinite(row[name]):
                return "failed"
            lo, hi = row[f"{name}_lo"], row[f"{name}_hi"]
            return f"{row[name]:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else f"{row[name]:.3f}"
        p = [row[k] for k in ("E", "A", "B", "alpha", "beta", "a_parametric")]
        # 4 significant digits: A and B span 1e2-1e6 on published data, and an accepted boundary
        # fit can push them to 1e40 (a fixed-point format printed 42 digits)
        params = (f"{p[0]:7.4g} {p[1]:9.4g} {p[2]:9.4g} {p[3]:6.3f} {p[4]:6.3f} {p[5]:6.3f}"
                  if math.isfinite(p[0]) else "approach 3 failed")
        budgets = (f"{row['n_budgets_fitted']}/{row['n_budgets']}" if 0 < row["n_budgets_fitted"] < row["n_budgets"]
                   else str(row["n_budgets"]))  # approach 2 left some out: fitted/all
        lines.append(f"{row['group']:<{width}} {row['n_runs']:>4} {budgets:>7}  {est('a'):<24} {est('b'):<24} {params}")
    for m in result.multipliers:
        for l, r, lo, hi in zip(m.loss, m.ratio, m.ratio_lo, m.ratio_hi):
            band = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
            lines.append(f"multiplier {m.family} / {m.reference} at loss {l:.4g}: {r:.3f}x FLOPs{band}")
    for g in result.groups:
        if g.holdout:
            h = g.holdout
            lines.append(f"held-out {g.label} at {h.flops:.3g} FLOPs: N* error {100 * h.n_params_error:+.1f}%, "
                         f"L* error {100 * h.loss_error:+.2f}% (fit on {h.n_budgets_fitted} budgets)")
    for flops in at:
        lines.extend(prediction_line(predict_at(g, flops), width) for g in result.groups)
    return lines


def prediction_line(p, width: int = 0) -> str:
    """'at 1e+21 FLOPs  ar  N* 1.2e+09 [9.8e+08, 1.5e+09]  D* ...  L* ...  (approach 3: N* ..., D* ...)'."""
    def value(name, digits):
        v, lo, hi = getattr(p, name), getattr(p, f"{name}_lo"), getattr(p, f"{name}_hi")
        band = f" [{lo:.{digits}g}, {hi:.{digits}g}]" if math.isfinite(lo) else ""
        return f"{v:.{digits}g}{band}"
    head = f"at {p.flops:.3g} FLOPs  {p.group:<{width}}"
    if not math.isfinite(p.n_params):
        law = "no approach-2 law"
    else:
        reach = f", {p.extrapolation:.3g}x beyond the largest fitted budget" if p.extrapolation > 1.0 + 1e-9 else ""
        law = (f"N* {value('n_params', 3)}  D* {value('n_tokens', 3)}  D*/N* {p.tokens_per_param:.3g}  "
               f"L* {value('loss', 4)}{reach}")
    if math.isfinite(p.n_params_parametric):
        law += f"  (approach 3: N* {p.n_params_parametric:.3g}, D* {p.n_tokens_parametric:.3g})"
    return f"{head}  {law}"
