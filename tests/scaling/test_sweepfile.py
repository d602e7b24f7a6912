"""Sweep files: every shipped sweep loads; every malformed one fails with one clear line."""

import subprocess
import sys
from pathlib import Path

import pytest

from scaling.errors import UserError
from scaling.sweepfile import load_plan, load_sweep

REPO = Path(__file__).resolve().parents[2]
BAD = sorted((Path(__file__).parent / "bad_sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads_and_expands(path):
    sweep, plan = load_plan(path)
    assert plan.runs
    budgets = {spec.flops_budget for spec in plan.runs}
    assert budgets == set(sweep.budgets)


def test_at_least_twenty_malformed_sweeps():
    assert len(BAD) >= 20


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_malformed_sweep_gives_one_line(path):
    with pytest.raises(UserError) as info:
        load_plan(path)
    message = str(info.value)
    assert "\n" not in message
    assert _expected(path) in message
    assert message.startswith(str(path))


def test_cli_error_is_one_line_exit_2_nothing_written(tmp_path):
    """Through the real console entry: exit 2, one stderr line, no traceback, no output dir."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "sweeps" / "smoke.yaml").read_text()
                   .replace("output_dir: outputs", f"output_dir: {tmp_path / 'out'}")
                   .replace("budgets: [6e9, 1.2e10]", "budgets: [6e9, -1e18]"))
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "plan", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "sweep.budgets[1]: must be > 0.0, got -1e+18" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_one_line(tmp_path):
    with pytest.raises(UserError, match="no such sweep file"):
        load_sweep(tmp_path / "nope.yaml")


def test_yaml_1_1_exponent_reads_as_number(tmp_path):
    """`1e18` is a string under YAML 1.1; the loader reads it as the number it obviously is."""
    text = (REPO / "sweeps" / "smoke.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("budgets: [6e9, 1.2e10]", "budgets: [6e9, 12e+9, 1.5E10]"))
    sweep = load_sweep(path)
    assert sweep.budgets == [6e9, 1.2e10, 1.5e10]
    assert all(isinstance(b, float) for b in sweep.budgets)


@pytest.mark.parametrize("text,expected", [("auto", "auto"), ("on", True), ("true", True),
                                           ("off", False), ("false", False), ("blocks", "blocks"),
                                           ("trunk", "trunk"), ("everything", None)])
def test_compile_reads_yaml_booleans(tmp_path, text, expected):
    """`compile: on` is a YAML boolean; every spelling a user would write means what it says, and
    a scope that does not exist names the key and the choices."""
    path = tmp_path / "s.yaml"
    path.write_text((REPO / "sweeps" / "smoke.yaml").read_text()
                    .replace("  cpus_per_worker: 1", f"  cpus_per_worker: 1\n  compile: {text}"))
    if expected is None:
        with pytest.raises(UserError, match="resources.compile.*trunk"):
            load_sweep(path)
    else:
        assert load_sweep(path).resources.compile == expected


def test_whole_model_compilation_is_for_the_families_with_fixed_shapes(tmp_path):
    """`compile: whole` suits AR and Duo; the smoke sweep's MDLM would recompile at every step. What
    counts is each run's setting after the tiers: sweep-wide it is refused, and accepted where a
    tier gives MDLM the trunk, or gives AR alone the whole model."""
    smoke = (REPO / "sweeps" / "smoke.yaml").read_text()
    path = tmp_path / "s.yaml"

    def plan_with(resources: str):
        path.write_text(smoke.replace("  cpus_per_worker: 1", "  cpus_per_worker: 1\n" + resources))
        return load_plan(path)[1]

    with pytest.raises(UserError, match=r"compile: whole \(resources.compile, or a tier's\) reaches 6 "
                                        r"runs of 'mdlm-lowvar'.*use trunk for mdlm-lowvar"):
        plan_with("  compile: whole")
    for resources in ("  compile: whole\n  tiers:\n    - {families: [mdlm-lowvar], compile: trunk}",
                      "  compile: trunk\n  tiers:\n    - {families: [ar], compile: whole}"):
        plan = plan_with(resources)
        assert {run.label: run.resources.compile for run in plan.runs} == {"ar": "whole",
                                                                          "mdlm-lowvar": "trunk"}


@pytest.mark.parametrize("text,expected", [("on", True), ("off", False), ("auto", "auto"), ("yes please", None)])
def test_fused_head_is_auto_or_a_boolean(tmp_path, text, expected):
    """`resources.fused_head` (trainers/fused_head.py) is auto, on or off; anything else names the key."""
    path = tmp_path / "s.yaml"
    path.write_text((REPO / "sweeps" / "smoke.yaml").read_text()
                    .replace("  cpus_per_worker: 1", f"  cpus_per_worker: 1\n  fused_head: {text}"))
    if expected is None:
        with pytest.raises(UserError, match="resources.fused_head"):
            load_sweep(path)
    else:
        assert load_sweep(path).resources.fused_head == expected
