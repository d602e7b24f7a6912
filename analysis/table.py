"""Read runs into one canonical table: family, flops, n_params, tokens, loss (+ budget).

Sources:
- a sweep directory holding results.parquet (or results.csv) written by `scaling run`; its
  columns map family -> family, flops_budget -> flops, n_params -> n_params (non-embedding),
  n_tokens -> tokens, val_loss -> loss; rows whose status is not a finished one are left out;
- any CSV of published runs, with `--columns canonical=source,...` naming its columns
  (e.g. n_params="Model Size",flops="Training FLOP" for Hoffmann's data as re-extracted by Epoch).
Several sources are concatenated. Missing tokens default to D = C / (6 N) (the 6ND convention).

`budget` is the iso-FLOP group a run belongs to. A sweep's flops_budget is already exact; runs read
off a published figure carry noisy FLOP values, which assign_budgets can snap to shared budgets
(nearest given centre, or runs within a tolerance in log10 of the smallest run of a cluster).
Everything a user can get wrong here raises UserError with the fix.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.storage import location

CANONICAL = ("family", "flops", "n_params", "tokens", "loss")
RESULT_FILES = ("results.parquet", "results.csv")  # what `scaling run` writes in a run store, read in this order
REQUIRED = ("flops", "n_params", "loss")
SWEEP_COLUMNS = {"family": "family", "flops": "flops_budget", "n_params": "n_params", "tokens": "n_tokens", "loss": "val_loss"}
FINISHED_STATUSES = frozenset({"ok", "done", "success", "succeeded", "completed", "finished"})
EXAMPLE = 'e.g. --columns n_params="Model Size",flops="Training FLOP"'
SAME_BUDGET_RTOL = 1e-6  # flops equal to 6 significant digits are one budget (float round-off)


def parse_columns(spec: str | None) -> dict[str, str]:
    """'n_params=Model Size,flops="Training FLOP"' -> {'n_params': 'Model Size', 'flops': 'Training FLOP'}."""
    if not spec:
        return {}
    try:
        fields = next(csv.reader(io.StringIO(spec), skipinitialspace=True))
    except (csv.Error, StopIteration) as exc:
        raise UserError(f"--columns: cannot parse {spec!r} ({exc}); use canonical=Source,... {EXAMPLE}") from exc
    mapping = {}
    for item in fields:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip().strip("\"'")
        if not sep or not key or not value:
            raise UserError(f"--columns: {item!r} is not canonical=Source; {EXAMPLE}")
        if key not in CANONICAL:
            raise UserError(f"--columns: unknown canonical column {key!r}; choose from {', '.join(CANONICAL)}")
        mapping[key] = value
    return mapping


def read_table(path: Path) -> pd.DataFrame:
    """A parquet or CSV file, or a sweep directory's results.parquet / results.csv, local or at a
    URL (scaling/storage.py)."""
    path = location(path)
    if path.is_dir():
        for name in RESULT_FILES:
            if (path / name).is_file():
                return read_table(path / name)
        raise UserError(f"{path}: no results.parquet or results.csv; pass a sweep output directory (scaling run writes them)")
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix in (".yaml", ".yml"):  # the commonest slip: the sweep file for its results
        raise UserError(f"{path}: a sweep file, not a results table; pass the sweep's output "
                        "directory (<output_dir>/<name>, e.g. outputs/demo) or its results.parquet")
    try:
        source = path if isinstance(path, Path) else io.BytesIO(path.read_bytes())
        return pd.read_parquet(source) if path.suffix == ".parquet" else pd.read_csv(source)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read the table ({type(exc).__name__}: {exc})") from exc


def canonicalize(raw: pd.DataFrame, columns: dict[str, str], source: str) -> pd.DataFrame:
    """Rename mapped columns to canonical names; keep every other column (for --group-by)."""
    for canonical, name in columns.items():
        if name not in raw.columns:
            raise UserError(f"{source}: unknown column {name!r} (for {canonical}); it has: {', '.join(map(str, raw.columns))}")
    renames = {name: canonical for canonical, name in columns.items() if name != canonical}
    # a table may already hold a column under a canonical name that the mapping replaces
    replaced = [canonical for canonical, name in columns.items() if name != canonical and canonical in raw.columns]
    df = raw.drop(columns=replaced).rename(columns=renames)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{source}: no column for {', '.join(missing)}; map them with --columns, {EXAMPLE}")
    for name in ("flops", "n_params", "loss") + (("tokens",) if "tokens" in df.columns else ()):
        values = pd.to_numeric(df[name], errors="coerce")
        not_numbers = values.isna() & df[name].notna()
        if not_numbers.any():
            bad = df[name][not_numbers].iloc[0]
            raise UserError(f"{source}: column {name} has a non-numeric value {bad!r}")
        df[name] = values.astype(float)
    if "tokens" not in df.columns:
        df["tokens"] = df["flops"] / (6.0 * df["n_params"])  # the 6ND convention
    return df


def finished_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows of a sweep table that finished (by status); returns (rows, how many were left out)."""
    if "status" not in df.columns:
        return df, 0
    done = df["status"].astype(str).str.lower().isin(FINISHED_STATUSES)
    return df[done], int((~done).sum())


def load_runs(sweep_dirs=(), csv_path=None, columns: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """All sources concatenated into one canonical table, plus notes for the user."""
    columns = dict(columns or {})
    frames, notes = [], []
    for sweep in sweep_dirs:
        raw, left_out = finished_runs(read_table(sweep))
        if left_out:
            notes.append(f"{sweep}: left out {left_out} runs whose status is not finished")
        mapping = {k: v for k, v in SWEEP_COLUMNS.items() if v in raw.columns} | columns
        frames.append(canonicalize(raw, mapping, str(sweep)).assign(source=str(sweep)))
    if csv_path is not None:
        raw = read_table(Path(csv_path))
        frames.append(canonicalize(raw, columns, str(csv_path)).assign(source=str(csv_path)))
    if not frames:
        raise UserError("no input: pass one or more sweep directories or --csv FILE")
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise UserError("the input tables hold no finished runs")
    return df, notes


def assign_budgets(flops, *, tolerance_dex: float = 0.0, centres=None) -> np.ndarray:
    """The budget of each run: with centres, the nearest centre within tolerance_dex (log10)
    or NaN (outside every budget); otherwise runs whose log10 flops lie within tolerance_dex of
    a cluster's smallest run share the cluster's geometric-mean flops. tolerance 0 = exact."""
    log_c = np.log10(np.asarray(flops, float))
    tol = max(tolerance_dex, np.log10(1.0 + SAME_BUDGET_RTOL))
    if centres is not None:
        log_centres = np.log10(np.asarray(centres, float))
        dist = np.abs(log_c[:, None] - log_centres[None])
        nearest = np.argmin(dist, axis=1)
        near = dist[np.arange(len(log_c)), nearest] <= tol
        return np.where(near, np.asarray(centres, float)[nearest], np.nan)
    flops = np.asarray(flops, float)
    budget = np.empty_like(log_c)
    order = np.argsort(log_c, kind="stable")
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and log_c[order[stop]] - log_c[order[start]] <= tol:
            stop += 1
        members = order[start:stop]
        same = np.all(flops[members] == flops[members[0]])  # an exact budget keeps its value
        budget[members] = flops[members[0]] if same else 10.0 ** log_c[members].mean()
        start = stop
    return budget


def split_groups(df: pd.DataFrame, group_by: list[str] | None) -> list[tuple[str, dict, pd.DataFrame]]:
    """[(label, {column: value}, rows)] per group; default: by family when there is one."""
    if group_by is None:
        group_by = ["family"] if "family" in df.columns else []
    unknown = [c for c in group_by if c not in df.columns]
    if unknown:
        raise UserError(f"--group-by: unknown column {unknown[0]!r}; the table has: {', '.join(map(str, df.columns))}")
    if not group_by:
        return [("all", {}, df)]
    groups = []
    for values, rows in df.groupby(group_by, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        key = {col: _plain(v) for col, v in zip(group_by, values)}
        label = str(values[0]) if len(group_by) == 1 else ",".join(f"{c}={v}" for c, v in key.items())
        groups.append((label, key, rows))
    return groups


def _plain(value):
    """numpy scalars -> Python values (for JSON)."""
    return value.item() if hasattr(value, "item") else value
