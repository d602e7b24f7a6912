"""The console script: every subcommand has useful help; plan prints the grid in three formats."""

import csv
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("plan",):
        assert command in out


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "plan" in commands
    for name, sub in commands.items():
        text = sub.format_help()
        assert len(text) > 200, name
        assert sub.description or sub.format_usage(), name


def test_plan_formats(capsys):
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml")]) == 0
    table = capsys.readouterr().out
    assert "total: 12 runs" in table and "achieved/C" in table
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12
    for field in ("run_id", "family", "flops_budget", "n_layers", "d_model", "n_heads", "n_params",
                  "n_tokens", "tokens_per_param", "steps", "achieved_flops"):
        assert field in rows[0]
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml"), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12


def test_console_script_installed():
    exe = Path(sys.executable).parent / "scaling"
    proc = subprocess.run([str(exe), "plan", str(REPO / "sweeps" / "paper.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ar-C1e20-L18d1280" in proc.stdout


def test_a_throughput_implies_the_estimate(capsys):
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml"), "--tokens-per-second", "400000"]) == 0
    out = capsys.readouterr().out
    assert "estimate: 400,000 tokens/s" in out and "given with --tokens-per-second" in out
    # beside machine-readable output the estimate goes to stderr: stdout stays parseable
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml"), "--format", "json", "--estimate"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 12 and "estimate:" in captured.err


def test_gpus_imply_the_estimate_with_the_wall_clock(capsys):
    assert main(["plan", str(REPO / "sweeps" / "paper.yaml"), "--gpus", "64"]) == 0
    out = capsys.readouterr().out
    assert "estimate: 396,457 tokens/s" in out and "total                 9,885 GPU-hours" in out
    assert "wall-clock on 64 GPUs: 6.5 days, the GPUs 99.7% busy (the longest run 13.3 h on 8 GPUs)" in out
    assert "ideal data parallelism" in out
    assert main(["plan", str(REPO / "sweeps" / "paper.yaml"), "--format", "csv", "--gpus", "8"]) == 0
    captured = capsys.readouterr()
    assert "wall-clock" not in captured.out and "wall-clock on 8 GPUs: 51.5 days" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["plan", "SWEEP", "--tokens-per-second", "0"], "--tokens-per-second: tokens per second must be"),
    (["plan", "SWEEP", "--estimate", "--tokens-per-second", "-5"], "finite number > 0, got -5.0"),
    (["plan", "SWEEP", "--tokens-per-second", "nan"], "finite number > 0, got nan"),
    (["plan", "SWEEP", "--gpus", "0"], "--gpus: a cluster needs at least one GPU, got 0"),
    (["plan", "SWEEP", "--gpus", "8"], "--gpus 8: run ar-C6e09-L2d16-4d03cca6dc asks for no GPUs"),
    (["plan", "PAPER", "--gpus", "4"], "needs 8 GPUs (8 workers x 1), more than the cluster's 4; "
                                        "estimate for --gpus 8 or more"),
    (["run", "SWEEP", "--num-cpus", "0"], "--num-cpus must be >= 1, got 0"),
    (["run", "SWEEP", "--max-concurrent", "0"], "--max-concurrent must be >= 1, got 0"),
])
def test_impossible_counts_fail_with_one_line_before_anything_starts(capsys, argv, message):
    # Before: a throughput of 0 fell back to the default and a negative one printed negative
    # GPU-hours; --max-concurrent 0 meant no limit and --num-cpus 0 a Ray that schedules nothing.
    sweeps = {"SWEEP": REPO / "sweeps" / "smoke.yaml", "PAPER": REPO / "sweeps" / "paper.yaml"}
    argv = [str(sweeps[a]) if a in sweeps else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err


def _smoke_in(tmp_path: Path, output_dir: Path | str | None = None) -> Path:
    """sweeps/smoke.yaml with its output_dir moved (default: tmp_path/out; a URL is fine)."""
    text = (REPO / "sweeps" / "smoke.yaml").read_text().replace(
        "output_dir: outputs", f"output_dir: {output_dir or tmp_path / 'out'}")
    sweep = tmp_path / "smoke.yaml"
    sweep.write_text(text)
    return sweep


def test_an_output_dir_that_cannot_be_made_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    sweep = _smoke_in(tmp_path, output_dir=blocker / "out")
    assert main(["run", str(sweep)]) == 2  # was a traceback from the tokenizer cache's mkdir
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "output_dir" in err and "cannot write there" in err
    assert len(err.splitlines()) == 1


def _hold_driver_lock(out: Path) -> subprocess.Popen:
    """Another process holding the sweep's driver lock, as a real first driver would (60 s)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from scaling.store import RunStore\n"
         f"with RunStore({str(out)!r}, 'smoke').driving():\n"
         "    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_driver_on_the_same_sweep_is_refused(tmp_path, capsys):
    from scaling.store import RunStore

    sweep = _smoke_in(tmp_path)
    holder = _hold_driver_lock(tmp_path / "out")
    try:
        assert main(["run", str(sweep)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another `scaling run` is driving this sweep" in err
        assert f"pid {holder.pid} on " in err
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    with RunStore(tmp_path / "out", "smoke").driving():
        pass


def test_status_tells_a_running_run_from_one_whose_driver_died(tmp_path, capsys):
    from scaling.sweepfile import load_plan
    from scaling.store import RunStore

    sweep = _smoke_in(tmp_path)
    _, plan = load_plan(sweep)
    run_id = plan.runs[0].run_id
    RunStore(tmp_path / "out", "smoke").write_status(run_id, "running", attempts=1)
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"interrupted  1      -         -       {run_id}" in out and "no driver: rerun" in out
    holder = _hold_driver_lock(tmp_path / "out")
    try:
        assert main(["status", str(sweep)]) == 0
        out = capsys.readouterr().out
        assert f"running  1      -         -       {run_id}" in out
        assert f"driven now by pid {holder.pid} on " in out
    finally:
        holder.kill()
        holder.wait()


def test_a_ray_address_where_nothing_answers_fails_in_seconds():
    from scaling.errors import UserError
    from scaling.executors import check_reachable

    with socket.socket() as listening:  # something answers: the check passes
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")
        port = listening.getsockname()[1]
    # Closed now: Ray would retry for minutes; the check names the address and the fix at once.
    with pytest.raises(UserError, match=f"127.0.0.1:{port}: nothing answers there .*ray start --head"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(UserError, match="expected HOST:PORT"):
        check_reachable("nonsense")
    check_reachable("auto")  # left to Ray, which fails fast without a cluster


def test_a_reader_that_leaves_early_is_not_an_error(monkeypatch):
    """`scaling plan SWEEP | head -1`: the pipe breaks under the writer once head has left; the
    command exits as a shell tool does (141), without a traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left
    with open(write_end, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["plan", str(REPO / "sweeps" / "smoke.yaml")]) == 141
