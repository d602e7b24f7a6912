"""Figures of a fitted sweep, sized for a paper column (3.3 in per panel), PNG + PDF + SVG.

- isoflop_curves: loss against N per budget, one panel per group, fitted parabolas and vertices
  (hollow vertex = outside the sampled sizes, accepted as an extrapolation);
- frontier_params_tokens: N*(C) and D*(C) with power laws, bootstrap bands and the Chinchilla
  rule D = 20 N (so C = 6 N D = 120 N^2, N* = sqrt(C / 120));
- loss_frontier: L*(C) of every group on one axis;
- tokens_per_param: D*/N* against C, with the Chinchilla 20;
- parametric_residuals: log L - log L_hat of approach 3's fit against N.
Figures are built with matplotlib's object API (Figure + its Agg canvas), so no pyplot state and
no GUI backend is ever touched.
"""

from __future__ import annotations

import io
import textwrap
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from analysis.sweep import GroupResult, SweepResult

PANEL_WIDTH_IN, PANEL_HEIGHT_IN = 3.3, 2.5  # one column of a two-column paper
MAX_COLUMNS = 4
TITLE_WIDTH_CHARS = 48  # what fits over a 3.3-inch panel at 8 pt
FORMATS = ("png", "pdf", "svg")
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022's compute-optimal ratio
STYLE = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 6.5,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0, "lines.markersize": 3.5,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "savefig.dpi": 300,
    "figure.constrained_layout.use": True, "svg.fonttype": "none", "pdf.fonttype": 42,
}
LABEL_N = "non-embedding parameters N"
LABEL_C = "training compute C (FLOPs)"
LABEL_LOSS = "loss (nats/token)"


@contextmanager
def _style():
    with mpl.rc_context(STYLE):
        yield


def _plain_ticks(axis):
    """Log-axis ticks as 2.5, 200 rather than 2.5 x 10^0, 2 x 10^2 (short spans only)."""
    plain = mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def group_colors(groups) -> dict[str, tuple]:
    cmap = mpl.colormaps["tab10"]
    return {g.label: cmap(i % 10) for i, g in enumerate(groups)}


def save_figure(fig: Figure, out_dir: Path, name: str, formats) -> list[Path]:
    # Lay out once and freeze it: constrained layout otherwise reruns on every savefig, which
    # doubled the time to write three formats.
    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine("none")
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        if isinstance(path, Path):
            fig.savefig(path)
        else:  # a run store at a URL (scaling/storage.py): one put per file
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext)
            path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _compute_grid(groups, pad=1.3):
    flops = np.concatenate([g.points["budget"].dropna().to_numpy(float) for g in groups])
    return np.geomspace(flops.min() / pad, flops.max() * pad, 100)


def _budget_optima(g: GroupResult) -> list:
    """When the group's iso-FLOP law failed, the budgets whose own parabola can be trusted: drawn so
    the figure shows which curves have a real minimum. Budgets that raise FitError are left bare."""
    from analysis.errors import FitError
    from analysis.isoflop import fit_budget

    optima = []
    for c in np.unique(g.points["budget"].dropna()):
        rows = g.points[g.points["budget"] == c]
        try:
            optima.append(fit_budget(float(c), rows["n_params"].to_numpy(float),
                                     rows["loss"].to_numpy(float), group=g.label))
        except FitError:
            continue
    return optima


def plot_isoflop_curves(groups: list[GroupResult]) -> Figure:
    n_cols = min(MAX_COLUMNS, len(groups))
    n_rows = -(-len(groups) // n_cols)
    fig = Figure(figsize=(PANEL_WIDTH_IN * n_cols, PANEL_HEIGHT_IN * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    budgets = np.unique(np.concatenate([g.points["budget"].dropna().to_numpy(float) for g in groups]))
    lo, hi = (budgets.min(), budgets.max()) if len(budgets) else (1.0, 10.0)  # no run on a budget: nothing coloured
    norm = mpl.colors.LogNorm(lo, hi * 1.0001)  # 1.0001: one budget still spans a range
    cmap = mpl.colormaps["viridis"]
    for ax, g in zip(axes, groups):
        for c in np.unique(g.points["budget"].dropna()):
            rows = g.points[g.points["budget"] == c]
            ax.plot(rows["n_params"], rows["loss"], "o", color=cmap(norm(c)), alpha=0.8, label=f"{c:.1e}")
        optima = g.isoflop.optima if g.isoflop else _budget_optima(g)
        for o in optima:
            n_grid = np.geomspace(o.n_params_min / 1.5, o.n_params_max * 1.5, 80)
            ax.plot(n_grid, o.parabola.loss_at(n_grid), "-", color=cmap(norm(o.flops)))
            face = "none" if o.at_edge else "white"
            ax.plot([o.n_params], [o.loss], "*", ms=8, mec="black", mfc=face, mew=0.8, zorder=5)
        n_budgets = g.points["budget"].nunique()
        title = g.label if g.isoflop else f"{g.label} ({len(optima)}/{n_budgets} budgets fit, no power law)"
        # a label of several --group-by columns ("dataset=rw,hparams=tuned,...") runs into the next
        # panel's title on one line: break it at its commas to fit the panel
        title = "\n".join(textwrap.wrap(title.replace(",", ", "), TITLE_WIDTH_CHARS)).replace(", ", ",")
        ax.set(xscale="log", xlabel=LABEL_N, ylabel=LABEL_LOSS, title=title)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    axes[0].legend(title="C (FLOPs)", loc="upper right", frameon=False)
    return fig


def _band(ax, flops, boot, coef_name, exp_name, color):
    if boot is None or len(boot.samples[exp_name]) < 2:
        return
    lo, hi = boot.interval_of(boot.power_law_at(coef_name, exp_name, flops))
    ax.fill_between(flops, lo, hi, color=color, alpha=0.2, lw=0)


def plot_frontiers(groups: list[GroupResult], colors) -> Figure:
    fig = Figure(figsize=(2 * PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax_n, ax_d = fig.subplots(1, 2)
    flops = _compute_grid(groups)
    for g in groups:
        if g.isoflop is None:
            continue
        c = colors[g.label]
        opt_c = [o.flops for o in g.isoflop.optima]
        for ax, law, attr, coef, exp, sym in (
            (ax_n, g.isoflop.n_params_law, "n_params", "n_params_coef", "a", "a"),
            (ax_d, g.isoflop.n_tokens_law, "n_tokens", "n_tokens_coef", "b", "b"),
        ):
            ax.plot(opt_c, [getattr(o, attr) for o in g.isoflop.optima], "o", color=c)
            ax.plot(flops, law(flops), "-", color=c, label=f"{g.label}: {sym} = {law.exponent:.3f}")
            _band(ax, flops, g.isoflop_boot, coef, exp, c)
    chinchilla_n = np.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    ax_n.plot(flops, chinchilla_n, "--", color="0.4", label="Chinchilla D = 20 N")
    ax_d.plot(flops, CHINCHILLA_TOKENS_PER_PARAM * chinchilla_n, "--", color="0.4", label="Chinchilla D = 20 N")
    ax_n.set(xscale="log", yscale="log", xlabel=LABEL_C, ylabel="compute-optimal N* (parameters)")
    ax_d.set(xscale="log", yscale="log", xlabel=LABEL_C, ylabel="compute-optimal D* (tokens)")
    for ax in (ax_n, ax_d):
        ax.legend(frameon=False)
    return fig


def plot_loss_frontier(groups: list[GroupResult], colors) -> Figure:
    fig = Figure(figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax = fig.subplots()
    flops = _compute_grid(groups)
    for g in groups:
        if g.isoflop is None:
            continue
        c = colors[g.label]
        ax.plot([o.flops for o in g.isoflop.optima], [o.loss for o in g.isoflop.optima], "o", color=c)
        law = g.isoflop.loss_law
        ax.plot(flops, law(flops), "-", color=c, label=f"{g.label}: $L^* \\propto C^{{{law.exponent:.3f}}}$")
        _band(ax, flops, g.isoflop_boot, "loss_coef", "loss_exponent", c)
    ax.set(xscale="log", yscale="log", xlabel=LABEL_C, ylabel=f"compute-optimal {LABEL_LOSS}")
    _plain_ticks(ax.yaxis)
    ax.legend(frameon=False)
    return fig


def plot_tokens_per_param(groups: list[GroupResult], colors) -> Figure:
    fig = Figure(figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax = fig.subplots()
    flops = _compute_grid(groups)
    for g in groups:
        if g.isoflop is None:
            continue
        c = colors[g.label]
        ax.plot([o.flops for o in g.isoflop.optima], [o.tokens_per_param for o in g.isoflop.optima], "o", color=c)
        ratio = g.isoflop.n_tokens_law(flops) / g.isoflop.n_params_law(flops)
        ax.plot(flops, ratio, "-", color=c, label=g.label)
    ax.axhline(CHINCHILLA_TOKENS_PER_PARAM, ls="--", color="0.4", label="Chinchilla 20")
    ax.set(xscale="log", yscale="log", xlabel=LABEL_C, ylabel="tokens per parameter D*/N*")
    _plain_ticks(ax.yaxis)
    ax.legend(frameon=False)
    return fig


def plot_parametric_residuals(groups: list[GroupResult], colors) -> Figure:
    fig = Figure(figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax = fig.subplots()
    for g in groups:
        if g.parametric is None:
            continue
        n, d, l = (g.points[k].to_numpy(float) for k in ("n_params", "tokens", "loss"))
        resid = np.log(l) - np.log(g.parametric.predict_loss(n, d))
        ax.plot(n, resid, "o", color=colors[g.label], alpha=0.7, mew=0, label=g.label)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set(xscale="log", xlabel=LABEL_N, ylabel="log L - log L_hat (approach 3)")
    ax.legend(frameon=False)
    return fig


def make_figures(result: SweepResult, out_dir, formats=FORMATS) -> list[Path]:
    """Every figure of a fitted sweep into out_dir (a folder or a URL); returns the written paths."""
    from scaling.storage import location

    out_dir = location(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = list(result.groups)
    colors = group_colors(groups)
    paths = []
    with _style():
        paths += save_figure(plot_isoflop_curves(groups), out_dir, "isoflop_curves", formats)
        if any(g.isoflop for g in groups):
            paths += save_figure(plot_frontiers(groups, colors), out_dir, "frontier_params_tokens", formats)
            paths += save_figure(plot_loss_frontier(groups, colors), out_dir, "loss_frontier", formats)
            paths += save_figure(plot_tokens_per_param(groups, colors), out_dir, "tokens_per_param", formats)
        if any(g.parametric for g in groups):
            paths += save_figure(plot_parametric_residuals(groups, colors), out_dir, "parametric_residuals", formats)
    return paths
