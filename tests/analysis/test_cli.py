"""Reading tables, `scaling fit` and `scaling plot`: user errors, JSON, files written."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import cli
from analysis.synthetic import CHINCHILLA_SURFACE, Surface, make_sweep_table
from analysis.table import assign_budgets, load_runs, parse_columns
from scaling.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
CHINCHILLA_CSV = SHARED / "data" / "chinchilla_epoch" / "points.csv"
CHINCHILLA_COLUMNS = "n_params=Model Size,flops=Training FLOP"
FAMILIES = {
    "ar": CHINCHILLA_SURFACE,
    "mdlm-lowvar": Surface(E=1.9, A=477.8, B=2143.9, alpha=0.36, beta=0.33),
    "duo": Surface(E=1.95, A=400.0, B=2500.0, alpha=0.34, beta=0.34),
}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def chinchilla_csv() -> Path:
    if not CHINCHILLA_CSV.exists():
        pytest.skip(f"shared data not found at {CHINCHILLA_CSV} (CI puts shared/ beside the repo)")
    return CHINCHILLA_CSV


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """3 families x 3 budgets x 5 sizes, as `scaling run` writes it."""
    make_sweep_table(FAMILIES, budgets=(1e18, 1e19, 1e20), n_sizes=5, span_dex=1.0, noise=0.003).to_parquet(
        tmp_path / "results.parquet", index=False
    )
    return tmp_path


# --- tables -----------------------------------------------------------------------------------


def test_parse_columns_accepts_quoted_and_bare_names():
    expected = {"n_params": "Model Size", "flops": "Training FLOP"}
    assert parse_columns('n_params="Model Size",flops="Training FLOP"') == expected
    assert parse_columns(CHINCHILLA_COLUMNS) == expected


@pytest.mark.parametrize(
    "spec, message", [("n_params", "is not canonical=Source"), ("size=Model Size", "unknown canonical column")]
)
def test_parse_columns_rejects_bad_syntax(spec, message):
    with pytest.raises(UserError, match=message):
        parse_columns(spec)


def test_assign_budgets_exact_tolerance_and_centres():
    flops = np.array([1e19, 1e19, 3e19, 1.02e19, 2.9e19])
    assert list(assign_budgets(flops)[:3]) == [1e19, 1e19, 3e19]
    clustered = assign_budgets(flops, tolerance_dex=0.02)
    assert clustered[0] == clustered[3] != clustered[2]
    snapped = assign_budgets(np.array([0.98e19, 3.1e19, 6e19]), tolerance_dex=0.05, centres=[1e19, 3e19])
    assert snapped[0] == 1e19 and snapped[1] == 3e19 and np.isnan(snapped[2])


def test_sweep_table_maps_to_canonical_columns(sweep_dir):
    df, notes = load_runs([sweep_dir])
    assert {"family", "flops", "n_params", "tokens", "loss"} <= set(df.columns)
    raw = pd.read_parquet(sweep_dir / "results.parquet")
    np.testing.assert_array_equal(df["loss"], raw["val_loss"])
    np.testing.assert_array_equal(df["tokens"], raw["n_tokens"])
    assert notes == []


def test_several_sweeps_are_concatenated(tmp_path):
    for family in ("ar", "duo"):
        (tmp_path / family).mkdir()
        make_sweep_table({family: FAMILIES[family]}, n_sizes=4).to_csv(tmp_path / family / "results.csv", index=False)
    df, _ = load_runs([tmp_path / "ar", tmp_path / "duo"])
    assert sorted(df["family"].unique()) == ["ar", "duo"] and len(df) == 2 * 3 * 4


def test_tokens_default_to_6nd(chinchilla_csv):
    df, _ = load_runs(csv_path=chinchilla_csv, columns=parse_columns(CHINCHILLA_COLUMNS))
    np.testing.assert_allclose(df["tokens"], df["flops"] / (6 * df["n_params"]))


# --- user errors (exit 2 through the top-level CLI) ----------------------------------------------


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        run(["fit", "--csv", str(tmp_path / "nope.csv")])
    with pytest.raises(UserError, match="no results.parquet"):
        run(["fit", str(tmp_path)])


def _sweep_yaml(repo, tmp_path, output_dir: Path) -> Path:
    """sweeps/smoke.yaml with its run store moved to output_dir/smoke."""
    import yaml

    config = yaml.safe_load((repo / "sweeps" / "smoke.yaml").read_text())
    config["output_dir"] = str(output_dir)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_sweep_file_stands_for_its_run_store(repo, tmp_path, capsys):
    store = tmp_path / "out" / "smoke"
    store.mkdir(parents=True)
    make_sweep_table(FAMILIES, budgets=(1e18, 1e19, 1e20), n_sizes=5, span_dex=1.0, noise=0.003).to_parquet(
        store / "results.parquet", index=False)
    assert run(["fit", str(_sweep_yaml(repo, tmp_path, tmp_path / "out")), "--bootstrap", "0"]) == 0
    assert (store / "fits" / "fits.csv").exists()  # written beside the results, as for the directory


def test_a_sweep_file_without_results_says_to_run_it(repo, tmp_path):
    sweep = _sweep_yaml(repo, tmp_path, tmp_path / "empty")
    with pytest.raises(UserError, match=rf"{sweep}: its run store .*empty/smoke holds no results yet; "
                                        rf"run `scaling run {sweep}` first"):
        run(["fit", str(sweep)])


def test_a_sweep_file_passed_as_a_table_names_the_fix(repo):
    with pytest.raises(UserError, match=r"a sweep file, not a results table; pass the sweep's output directory"):
        run(["fit", "--csv", str(repo / "sweeps" / "demo.yaml")])


def test_unknown_column_in_columns_is_a_user_error(chinchilla_csv):
    with pytest.raises(UserError, match="unknown column 'Model Sise'"):
        run(["fit", "--csv", str(chinchilla_csv), "--columns", "n_params=Model Sise,flops=Training FLOP"])


def test_unmapped_required_column_is_a_user_error(chinchilla_csv):
    with pytest.raises(UserError, match="no column for flops, n_params"):
        run(["fit", "--csv", str(chinchilla_csv)])


def test_unknown_group_by_column_is_a_user_error(sweep_dir):
    with pytest.raises(UserError, match="--group-by: unknown column 'dataset'"):
        run(["fit", str(sweep_dir), "--group-by", "dataset", "--bootstrap", "0"])


@pytest.mark.parametrize("at, problem", [("1e21,lots", "is not a comma-separated list"), ("0", "must be positive")])
def test_a_bad_compute_to_answer_for_is_a_user_error(sweep_dir, at, problem):
    with pytest.raises(UserError, match=f"--at: .*{problem}"):
        run(["fit", str(sweep_dir), "--at", at, "--bootstrap", "0"])


@pytest.mark.parametrize("window", ["0", "-0.5"])
def test_a_parabola_window_must_be_positive(sweep_dir, window):
    with pytest.raises(UserError, match=f"--parabola-window must be > 0 decades, got {float(window)}"):
        run(["fit", str(sweep_dir), "--parabola-window", window, "--bootstrap", "0"])


def test_a_parabola_window_fits_only_the_runs_near_each_budgets_best(sweep_dir):
    """5 sizes a quarter decade apart around each optimum: a 0.3-decade window keeps 3 of them."""
    assert run(["fit", str(sweep_dir), "--parabola-window", "0.3", "--bootstrap", "0"]) == 0
    optima = pd.read_csv(sweep_dir / "fits" / "optima.csv")
    assert set(optima["n_runs"]) == {3}


# --- fit / plot -------------------------------------------------------------------------------


def test_fit_json_on_chinchilla(chinchilla_csv, tmp_path, capsys):
    status = run(["fit", "--csv", str(chinchilla_csv), "--columns", CHINCHILLA_COLUMNS, "--drop-highest", "5",
                  "--bootstrap", "20", "--json", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert isinstance(records, list) and len(records) == 1
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "a_lo", "a_hi", "b_lo", "b_hi", "E_se"):
        assert key in records[0]
    assert records[0]["E"] == pytest.approx(1.8172, rel=0.005)
    # Hoffmann's FLOPs were read off a figure: no two runs share a budget, approach 2 fails loudly
    assert status == 1 and "error: " in err and "not iso-FLOP groups" in err
    assert records[0]["a"] is None and records[0]["errors"]
    assert (tmp_path / "fits.csv").exists() and (tmp_path / "fits.md").exists()


def test_fit_sweep_writes_tables_and_prints_groups(sweep_dir, capsys):
    assert run(["fit", str(sweep_dir), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    for family in FAMILIES:
        assert family in out
    assert "multiplier" in out and "held-out" in out
    for name in ("fits", "optima", "multipliers"):
        assert (sweep_dir / "fits" / f"{name}.csv").exists() and (sweep_dir / "fits" / f"{name}.md").exists()
    fits = pd.read_csv(sweep_dir / "fits" / "fits.csv")
    assert list(fits["group"]) == sorted(FAMILIES)


def test_fit_at_a_compute_answers_for_every_group(sweep_dir, capsys):
    assert run(["fit", str(sweep_dir), "--bootstrap", "20", "--at", "1e21,1e22"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("at ")]
    assert len(lines) == 2 * len(FAMILIES)
    assert all("N* " in line and "D*/N* " in line and "x beyond the largest fitted budget" in line for line in lines)
    table = pd.read_csv(sweep_dir / "fits" / "predictions.csv")
    assert list(table["flops"]) == [1e21] * 3 + [1e22] * 3
    truth = CHINCHILLA_SURFACE.as_fit().compute_optimal(1e21)[0]
    ar = table[(table["family"] == "ar") & (table["flops"] == 1e21)].iloc[0]
    assert ar["n_params"] == pytest.approx(truth, rel=0.2) and ar["extrapolation"] == pytest.approx(10.0)
    assert ar["n_params_lo"] < ar["n_params"] < ar["n_params_hi"]
    record = json.loads((sweep_dir / "fits" / "fits.json").read_text())[0]
    assert [p["flops"] for p in record["predictions"]] == [1e21, 1e22]
    assert run(["fit", str(sweep_dir), "--bootstrap", "0"]) == 0  # refitted without --at: no stale table
    assert not (sweep_dir / "fits" / "predictions.csv").exists()


def test_a_family_trained_on_mixed_precision_is_a_visible_warning(tmp_path, capsys):
    """A sweep's tiers may put some runs on a GPU in bf16 and others on a CPU in fp32; the fit
    says so, and --group-by family,precision fits them apart."""
    table = make_sweep_table(FAMILIES, budgets=(1e18, 1e19, 1e20), n_sizes=5, span_dex=1.0, noise=0.003)
    table["device"], table["precision"] = "cpu", "fp32"
    gpu = (table["family"] == "ar") & (table["flops_budget"] == 1e20)
    table.loc[gpu, ["device", "precision"]] = ["NVIDIA H100 80GB HBM3", "bf16"]
    table.to_parquet(tmp_path / "results.parquet", index=False)
    assert run(["fit", str(tmp_path), "--bootstrap", "0"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "mixed" in line]
    assert warned == [
        "warning: group ar: its runs trained on mixed precision (bf16 5, fp32 10 runs); their losses "
        "are not on one footing: fit them apart with --group-by family,precision, or retrain on one "
        "setup"]


def test_edge_vertex_is_an_error_or_a_visible_warning(tmp_path, capsys):
    table = make_sweep_table({"ar": CHINCHILLA_SURFACE}, budgets=(1e18, 1e19, 1e20), n_sizes=5, span_dex=0.5)
    table["n_params"] *= 10 ** 0.6  # every grid now sits above the optimum
    table["n_tokens"] = table["flops_budget"] / (6 * table["n_params"])
    table["val_loss"] = CHINCHILLA_SURFACE.as_fit().predict_loss(table["n_params"], table["n_tokens"])
    table.to_csv(tmp_path / "results.csv", index=False)
    assert run(["fit", str(tmp_path), "--bootstrap", "0"]) == 1
    assert "outside the sampled sizes" in capsys.readouterr().err
    assert run(["plot", str(tmp_path), "--bootstrap", "0", "--formats", "png"]) == 1
    assert capsys.readouterr().err == ("note: the figures show what did fit (1 error: `scaling fit` "
                                       "with the same arguments prints them)\n")
    assert run(["fit", str(tmp_path), "--bootstrap", "0", "--accept-edge-vertex"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: ") >= 3 and "extrapolated, accepted" in err


def test_failed_budgets_fail_the_group_or_are_left_out_visibly(tmp_path, capsys):
    table = make_sweep_table({"ar": CHINCHILLA_SURFACE}, budgets=(1e18, 1e19, 1e20, 1e21), n_sizes=5, span_dex=0.5)
    smallest = table["flops_budget"] == 1e18
    table.loc[smallest, "n_params"] *= 10 ** 0.6  # this budget's grid now sits above its optimum
    table.loc[smallest, "n_tokens"] = 1e18 / (6 * table.loc[smallest, "n_params"])
    table["val_loss"] = CHINCHILLA_SURFACE.as_fit().predict_loss(table["n_params"], table["n_tokens"])
    table.to_csv(tmp_path / "results.csv", index=False)
    assert run(["fit", str(tmp_path), "--bootstrap", "0"]) == 1
    assert "--drop-failed-budgets" in capsys.readouterr().err
    assert run(["fit", str(tmp_path), "--bootstrap", "20", "--drop-failed-budgets"]) == 0
    captured = capsys.readouterr()
    assert "warning: group ar: budget 1e+18 FLOPs left out of approach 2: vertex N*" in captured.err
    assert captured.out.splitlines()[1].split()[:3] == ["ar", "20", "3/4"]
    fits = pd.read_csv(tmp_path / "fits" / "fits.csv")
    assert (fits.loc[0, "n_budgets"], fits.loc[0, "n_budgets_fitted"]) == (4, 3)
    assert fits.loc[0, "a"] == pytest.approx(CHINCHILLA_SURFACE.as_fit().a, abs=0.02)
    assert list(pd.read_csv(tmp_path / "fits" / "optima.csv")["flops"]) == [1e19, 1e20, 1e21]


def test_a_boundary_parametric_fit_is_an_error_or_a_visible_warning(tmp_path, capsys):
    """Approach 3 on runs with no N-dependence: A/N^alpha vanishes or goes flat (a second E)."""
    table = make_sweep_table({"ar": CHINCHILLA_SURFACE}, budgets=(1e18, 1e19, 1e20, 1e21), n_sizes=7, span_dex=1.0)
    flat_in_n = Surface(E=1.8, A=0.0, B=2143.9, alpha=0.35, beta=0.37).as_fit()
    noise = np.random.default_rng(0).normal(0.0, 0.003, len(table))
    table["val_loss"] = flat_in_n.predict_loss(table["n_params"], table["n_tokens"]) + noise
    table.to_csv(tmp_path / "results.csv", index=False)
    assert run(["fit", str(tmp_path), "--bootstrap", "0", "--accept-edge-vertex"]) == 1
    captured = capsys.readouterr()
    assert "error: group ar: approach 3: the optimum lies on the law's boundary" in captured.err
    assert "approach 3 failed" in captured.out
    assert run(["fit", str(tmp_path), "--bootstrap", "0", "--accept-edge-vertex", "--accept-boundary-fit"]) == 0
    captured = capsys.readouterr()
    assert "warning: group ar: approach 3: A/N^alpha " in captured.err and "(accepted)" in captured.err
    assert "approach 3 failed" not in captured.out
    record = json.loads((tmp_path / "fits" / "fits.json").read_text())[0]
    assert any("approach 3: A/N^alpha" in w for w in record["warnings"])


def test_plot_writes_png_pdf_svg(sweep_dir, capsys):
    assert run(["plot", str(sweep_dir), "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out.split()
    figures = sweep_dir / "figures"
    for name in ("isoflop_curves", "frontier_params_tokens", "loss_frontier", "tokens_per_param", "parametric_residuals"):
        for ext in ("png", "pdf", "svg"):
            path = figures / f"{name}.{ext}"
            assert path.stat().st_size > 1000, path
            assert str(path) in printed


def test_a_budget_no_run_is_at_names_the_tables_budgets(sweep_dir):
    # It used to fit nothing, with a warning per group that its runs "match no budget".
    with pytest.raises(UserError, match=r"--budgets: no run at 3e\+19 FLOPs .*runs are at 1e\+18, 1e\+19, 1e\+20"):
        run(["fit", str(sweep_dir), "--budgets", "1e18,3e19", "--bootstrap", "0"])
    assert run(["fit", str(sweep_dir), "--budgets", "1e18,1e19,1e20", "--bootstrap", "0"]) == 0


@pytest.mark.parametrize("command", ["fit", "plot"])
def test_an_unwritable_out_is_one_line(sweep_dir, tmp_path, command):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(UserError, match="--out .*taken: cannot write there"):
        run([command, str(sweep_dir), "--out", str(a_file), "--bootstrap", "0"])


def test_a_wild_bootstrap_resample_draws_no_numpy_warning():
    """A resample of a few budgets may draw an exponent of 40 (its curve overflows) and a
    coefficient of 0 (0 x inf): the band and `--at`'s interval leave those points out without a
    RuntimeWarning."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from analysis.bootstrap import BootstrapSamples
    from analysis.plots import _band

    boot = BootstrapSamples(4, 0, {"k": np.array([0.1, 0.2, 0.0, 0.15]),
                                   "a": np.array([0.5, 0.52, 40.0, 0.49])})
    ax = Figure().subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _band(ax, np.logspace(18, 22, 9), boot, "k", "a", "C0")
        at_1e22 = boot.power_law_at("k", "a", 1e22)  # `scaling fit --at`'s interval
    assert len(ax.collections) == 1
    assert at_1e22[0] == pytest.approx(0.1 * 1e11) and np.isnan(at_1e22[2])


def test_plot_rejects_unknown_format(sweep_dir):
    with pytest.raises(UserError, match="--formats: gif"):
        run(["plot", str(sweep_dir), "--formats", "png,gif"])


def test_cli_choices_mirror_the_modules():
    from analysis.bootstrap import BOOTSTRAP_METHODS
    from analysis.plots import FORMATS

    assert cli.FORMATS == FORMATS and cli.BOOTSTRAP_METHODS == BOOTSTRAP_METHODS


def test_analysis_imports_no_torch_ray_or_deepspeed():
    code = ("import sys, analysis.cli, analysis.plots; "
            "bad = [m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
