"""The speed/quality Pareto frontier of sampled families (REFERENCE §5), from a table of measurements.

Pure pandas/numpy over the rows `scaling pareto` writes (trainers/pareto.py): one row per family x
steps x cache with `tokens_per_second` (higher is better) and `gen_ppl` (lower is better).

- `pareto_frontier`: the rows no other row beats on both axes.
- `dominance_ranges`: which family dominates each throughput range. For a required throughput tau
  the best achievable quality is that of the frontier point with the smallest throughput >= tau;
  frontier point i therefore owns (x_{i-1}, x_i] (the slowest owns (0, x_0]), and neighbouring
  points of one family merge into one range.
- `select_compute_optimal`: which trained checkpoint stands for a family: at the family's largest
  budget, the run nearest (in log N) to the vertex of the iso-FLOP parabola when one can be fitted
  (analysis/isoflop.fit_budget: >= 3 sizes, positive curvature, vertex inside the sampled sizes),
  else the run with the lowest validation loss there. The vertex usually falls between two trained
  sizes, so a checkpoint is always a trained one, never an interpolation.
- `step_trends`: whether quality improves with sampling steps: per family and cache mode, the slope
  of log gen-PPL per doubling of the step count, a weighted least-squares line (weights 1 / se^2
  of each point's log gen-PPL), with its standard error. One configuration's gen-PPL carries
  sampling noise (~0.06 in log at 64 samples of the demo models), comparable to the change between
  neighbouring step counts, so the sign of the fitted slope is the claim to check, not every pair.
- `plot_pareto`: gen-PPL against throughput (log-log), one colour per family, solid = cache on,
  dashed = cache off (or no cache to use: Duo), each family's curve drawn through its step counts
  in order and its points labelled with them, the frontier as a black step line and the dominance
  ranges shaded and named.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.errors import FitError
from analysis.isoflop import fit_budget
from analysis.plots import FORMATS, STYLE, save_figure

X, Y = "tokens_per_second", "gen_ppl"
FIGURE_SIZE_IN = (6.0, 3.4)  # the legend sits right of the axes


def pareto_frontier(table: pd.DataFrame, x: str = X, y: str = Y) -> pd.DataFrame:
    """Rows not dominated by another row (x at least as high and y at least as low, one strictly),
    sorted by x ascending. Rows with a non-finite x or y are left out."""
    rows = table[np.isfinite(table[x].astype(float)) & np.isfinite(table[y].astype(float))]
    rows = rows.sort_values([x, y], ascending=[False, True], kind="mergesort")
    keep, best_y = [], np.inf
    for index, value in zip(rows.index, rows[y].astype(float)):
        if value < best_y:  # strictly better than every row at least as fast
            keep.append(index)
            best_y = value
    return rows.loc[keep].sort_values(x, kind="mergesort")


def dominance_ranges(table: pd.DataFrame, group: str = "family", x: str = X, y: str = Y) -> pd.DataFrame:
    """One row per throughput range and the group owning it: group, throughput_min (exclusive; 0
    for the slowest range), throughput_max (inclusive), gen_ppl_best / gen_ppl_worst (its frontier
    points' y at the slow and the fast end) and n_points. Sorted by throughput."""
    frontier = pareto_frontier(table, x, y)
    ranges: list[dict] = []
    previous_x = 0.0
    for owner, value_x, value_y in zip(frontier[group], frontier[x].astype(float), frontier[y].astype(float)):
        if ranges and ranges[-1][group] == owner:
            ranges[-1].update(throughput_max=value_x, gen_ppl_worst=value_y)
            ranges[-1]["n_points"] += 1
        else:
            ranges.append({group: owner, "throughput_min": previous_x, "throughput_max": value_x,
                           "gen_ppl_best": value_y, "gen_ppl_worst": value_y, "n_points": 1})
        previous_x = value_x
    return pd.DataFrame(ranges, columns=[group, "throughput_min", "throughput_max", "gen_ppl_best",
                                         "gen_ppl_worst", "n_points"])


def select_compute_optimal(results: pd.DataFrame) -> pd.DataFrame:
    """One row per family (label) of a results table (scaling/store.py columns family, run_id,
    flops_budget, n_params, val_loss): the checkpoint standing for its compute-optimal model at the
    largest budget, with `selected_by` saying how it was chosen."""
    runs = results[np.isfinite(results["val_loss"].astype(float))]
    chosen = []
    for family, rows in runs.groupby("family", sort=True):
        budget = rows["flops_budget"].max()
        at_budget = rows[rows["flops_budget"] == budget]
        try:
            vertex = fit_budget(budget, at_budget["n_params"], at_budget["val_loss"], group=str(family))
        except FitError as exc:
            pick = at_budget.loc[at_budget["val_loss"].astype(float).idxmin()]
            how = f"lowest val_loss at the largest budget {budget:.3g} (no trusted parabola: {exc.reason})"
        else:
            distance = (np.log(at_budget["n_params"].astype(float)) - np.log(vertex.n_params)).abs()
            pick = at_budget.loc[distance.idxmin()]
            how = f"nearest the fitted optimum N* = {vertex.n_params:.3g} at the largest budget {budget:.3g}"
        chosen.append({**pick.to_dict(), "selected_by": how})
    return pd.DataFrame(chosen)


def step_trends(table: pd.DataFrame, group: str = "family") -> pd.DataFrame:
    """One row per (group, use_cache) sampled at >= 2 step counts: slope_per_doubling of log gen-PPL
    against log2(n_steps), its standard error slope_se, n_points, and falls (slope + 2 se < 0).
    Needs the gen_ppl_log_se column (trainers/pareto.py); points without a finite one are dropped."""
    rows_out = []
    for (name, use_cache), rows in table.groupby([group, "use_cache"], sort=False):
        se = rows["gen_ppl_log_se"].astype(float).to_numpy()
        ok = np.isfinite(se) & (se > 0) & np.isfinite(rows[Y].astype(float).to_numpy())
        x = np.log2(rows["n_steps"].astype(float).to_numpy()[ok])
        y = np.log(rows[Y].astype(float).to_numpy()[ok])
        if len(np.unique(x)) < 2:
            continue
        w = 1.0 / se[ok] ** 2
        x_bar = np.sum(w * x) / np.sum(w)
        sxx = np.sum(w * (x - x_bar) ** 2)
        slope = float(np.sum(w * (x - x_bar) * (y - np.sum(w * y) / np.sum(w))) / sxx)
        slope_se = float(np.sqrt(1.0 / sxx))
        rows_out.append({group: name, "use_cache": bool(use_cache), "slope_per_doubling": slope,
                         "slope_se": slope_se, "n_points": int(len(x)), "falls": slope + 2 * slope_se < 0})
    return pd.DataFrame(rows_out, columns=[group, "use_cache", "slope_per_doubling", "slope_se",
                                           "n_points", "falls"])


def family_colors(families) -> dict[str, tuple]:
    cmap = mpl.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(families)}


def plot_pareto(table: pd.DataFrame, group: str = "family", x: str = X, y: str = Y) -> Figure:
    """The Pareto figure of a measurement table (see the module docstring)."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=FIGURE_SIZE_IN)
        ax = fig.add_subplot()
        families = list(dict.fromkeys(table[group]))
        colors = family_colors(families)
        both_modes = table.groupby(group)["use_cache"].nunique() > 1
        for (family, use_cache), rows in table.groupby([group, "use_cache"], sort=False):
            rows = rows.sort_values("n_steps")  # a family's curve runs through its step counts
            suffix = "" if use_cache or not both_modes[family] else " (no cache)"
            ax.plot(rows[x], rows[y], "-" if use_cache else "--", marker="o" if use_cache else "s",
                    color=colors[family], mfc=colors[family] if use_cache else "none",
                    label=f"{family}{suffix}")
            for _, row in rows.iterrows():
                ax.annotate(str(int(row["n_steps"])), (row[x], row[y]), textcoords="offset points",
                            xytext=(2, 3), fontsize=5, color=colors[family])
        frontier = pareto_frontier(table, x, y)
        ax.plot(frontier[x], frontier[y], color="black", lw=0.8, drawstyle="steps-pre", zorder=1,
                label="Pareto frontier")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = mticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        _shade_ranges(ax, dominance_ranges(table, group, x, y), colors, group)
        ax.set_xlabel("throughput (generated tokens / s)")
        ax.set_ylabel("generative perplexity (judge)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return fig


def _shade_ranges(ax, ranges: pd.DataFrame, colors, group: str) -> None:
    """Shade each dominance range in its family's colour and write the family's name in it."""
    left, right = ax.get_xlim()
    for _, r in ranges.iterrows():
        lo = max(float(r["throughput_min"]), left)
        hi = min(float(r["throughput_max"]), right)
        ax.axvspan(lo, hi, color=colors[r[group]], alpha=0.08, lw=0, zorder=0)
        ax.text(np.sqrt(lo * hi), 0.98, r[group], transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=5.5, color=colors[r[group]], rotation=90)
    ax.set_xlim(left, right)


def write_pareto_figure(table: pd.DataFrame, out_dir: Path, formats=FORMATS, name: str = "pareto",
                        group: str = "family") -> list[Path]:
    """pareto.png/.pdf/.svg in out_dir (a folder or a URL); returns their paths."""
    from scaling.storage import location

    out_dir = location(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_figure(plot_pareto(table, group=group), out_dir, name, formats)
