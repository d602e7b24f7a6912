"""The engine's pure parts: lr schedule, batch split, DeepSpeed config, seeds, records, checkpoints.

No DeepSpeed process group starts here (DeepSpeed initialises once per process); training runs
through the real engine in subprocesses in test_train_e2e.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scaling.errors import UserError
from scaling.schema import Recipe, Resources
from trainers.checkpoint import (BUILT, LATEST, build_once, checkpoint_interval, checkpoint_tag,
                                 latest_checkpoint, plan_resume)
from trainers.engine import (DivergedError, clip_gradients, LoopState, _check_finite, build_deepspeed_config,
                             deep_merge, derive_seed, plan_batches, resolve_precision)
from trainers.records import MetricsLog, atomic_write_json, read_jsonl
from trainers.schedule import compute_lr

# ---------------------------------------------------------------- schedule

SCHED = dict(lr_peak=1e-3, lr_min=1e-4, warmup_steps=10, total_steps=100)


def test_warmup_is_linear_and_reaches_peak():
    lrs = [compute_lr(s, **SCHED) for s in range(11)]
    assert lrs[0] == pytest.approx(1e-4)  # peak / warmup: the first step already learns
    assert all(b - a == pytest.approx(1e-4) for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)


def test_cosine_endpoints_and_midpoint():
    assert compute_lr(10, **SCHED) == pytest.approx(1e-3)
    assert compute_lr(99, **SCHED) == pytest.approx(1e-4)  # the last step is exactly lr_min
    mid = 10 + (99 - 10) / 2
    assert compute_lr(int(mid), **SCHED) == pytest.approx(
        1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    assert compute_lr(150, **SCHED) == pytest.approx(1e-4)  # past the end: stays at the floor


def test_schedule_monotone():
    lrs = [compute_lr(s, **SCHED) for s in range(100)]
    assert all(b >= a for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(b <= a + 1e-15 for a, b in zip(lrs[10:], lrs[11:]))
    assert min(lrs) >= 1e-4 - 1e-15 and max(lrs) <= 1e-3 + 1e-15


def test_schedule_without_warmup_and_edge_cases():
    assert compute_lr(0, lr_peak=1.0, lr_min=0.0, warmup_steps=0, total_steps=5) == 1.0
    assert compute_lr(4, lr_peak=1.0, lr_min=0.0, warmup_steps=0, total_steps=5) == pytest.approx(0.0)
    assert compute_lr(0, lr_peak=1.0, lr_min=0.5, warmup_steps=0, total_steps=1) == 1.0
    with pytest.raises(ValueError):
        compute_lr(0, lr_peak=1.0, lr_min=0.0, warmup_steps=6, total_steps=5)
    with pytest.raises(ValueError):
        compute_lr(0, lr_peak=1.0, lr_min=0.0, warmup_steps=0, total_steps=0)


# ---------------------------------------------------------------- batch split and config


@pytest.mark.parametrize("global_seqs, micro, workers, expect", [
    (256, None, 8, (32, 1)), (256, 8, 8, (8, 4)), (32, 4, 1, (4, 8)), (8, None, 1, (8, 1)),
])
def test_plan_batches_is_exact(global_seqs, micro, workers, expect):
    plan = plan_batches(global_seqs, micro, workers)
    assert (plan.micro_batch_seqs, plan.accumulation_steps) == expect
    assert plan.micro_batch_seqs * plan.accumulation_steps * workers == global_seqs


@pytest.mark.parametrize("global_seqs, micro, workers", [(30, None, 4), (32, 3, 1), (32, 16, 4)])
def test_plan_batches_rejects_inexact_splits(global_seqs, micro, workers):
    with pytest.raises(UserError):
        plan_batches(global_seqs, micro, workers)


def test_precision_auto():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_deepspeed_config_from_recipe():
    recipe = Recipe(global_batch_seqs=32, micro_batch_seqs=8, grad_clip=0.5)
    config = build_deepspeed_config(recipe, Resources(zero_stage=1), plan_batches(32, 8, 2), "fp32")
    assert config["train_batch_size"] == 32
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 1}
    assert not config["torch_autocast"]["enabled"] and not config["bf16"]["enabled"]
    assert config["wall_clock_breakdown"] is False and not config["flops_profiler"]["enabled"]
    assert config["steps_per_print"] > 10**9
    bf16 = build_deepspeed_config(recipe, Resources(), plan_batches(32, 8, 1), "bf16")
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}


def test_user_overrides_deep_merge():
    overrides = {"zero_optimization": {"stage": 2, "overlap_comm": True}, "gradient_clipping": 2.0,
                 "new_key": [1, 2]}
    config = build_deepspeed_config(Recipe(global_batch_seqs=8), Resources(deepspeed_overrides=overrides),
                                    plan_batches(8, None, 1), "fp32")
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert config["gradient_clipping"] == 2.0 and config["new_key"] == [1, 2]
    assert config["train_batch_size"] == 8  # untouched keys stay


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}} and merged["a"] == {"b": 2, "c": [1, 2]}


def test_derive_seed_deterministic_and_distinct():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(1, step, stream) for step in range(1000) for stream in (1, 2)}
    assert len(seeds) == 2000
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(2, 1)


def test_nonfinite_loss_names_the_step():
    _check_finite([1.0, 2.0], first_step=5)
    with pytest.raises(DivergedError, match="loss became nan at step 7; lower recipe.lr_peak"):
        _check_finite([1.0, 2.0, float("nan")], first_step=5)
    with pytest.raises(DivergedError, match="inf at step 1"):
        _check_finite([float("inf")], first_step=1)
    assert issubclass(DivergedError, UserError) and DivergedError.exit_code == 3


def test_loop_state_round_trip():
    state = LoopState(40, 12.5, [1.0, 2.0])
    assert LoopState.from_client_state(json.loads(json.dumps(state.to_client_state()))) == state


# ---------------------------------------------------------------- records and checkpoints


def test_atomic_json_and_torn_jsonl(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]  # no temp file left
    (tmp_path / "m.jsonl").write_text('{"step": 10}\n{"step": 20}\n{"step": 3')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 10}, {"step": 20}]


def test_metrics_log_cuts_rows_after_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in (10, 20, 30)))
    log = MetricsLog(path, resume_step=20)
    log.write([{"step": 30, "loss": 3.5}, {"step": 40, "loss": 4.5}])
    log.close()
    assert [r["step"] for r in read_jsonl(path)] == [10, 20, 30, 40]
    assert log.tail_mean(2) == pytest.approx(4.0)


def test_checkpoint_interval():
    assert checkpoint_interval(None, 100) == 10
    assert checkpoint_interval(None, 5) == 1
    assert checkpoint_interval(0, 100) == 0
    assert checkpoint_interval(7, 100) == 7


def test_latest_checkpoint_needs_its_folder(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    atomic_write_json(tmp_path / LATEST, {"tag": checkpoint_tag(20), "step": 20})
    assert latest_checkpoint(tmp_path) is None  # pointer without its checkpoint: not resumable
    (tmp_path / checkpoint_tag(20)).mkdir()
    assert latest_checkpoint(tmp_path) == {"tag": "step00000020", "step": 20}


def write_checkpoint_files(root: Path, *, ranks: int, zero_stage: int) -> None:
    """The file names DeepSpeed 0.19 writes for a checkpoint at step 20 (contents not read)."""
    tag_dir = root / checkpoint_tag(20)
    tag_dir.mkdir(parents=True)
    atomic_write_json(root / LATEST, {"tag": tag_dir.name, "step": 20})
    if zero_stage in (0, 1, 2):
        (tag_dir / "mp_rank_00_model_states.pt").touch()
    for rank in range(ranks if zero_stage else 0):
        (tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").touch()
        if zero_stage == 3:
            (tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").touch()


@pytest.mark.parametrize("written, now, universal", [
    ((0, 2), (0, 1), False),  # no ZeRO: the whole optimizer state loads into any worker count
    ((1, 2), (1, 2), False),
    ((1, 2), (2, 2), False),  # stages 1 and 2 share a format
    ((1, 2), (1, 1), True),   # ZeRO shards of 2 ranks into 1: through the universal copy
    ((2, 1), (1, 4), True),
    ((3, 2), (3, 1), True),
    ((3, 2), (3, 2), False),
])
def test_a_checkpoint_resumes_with_another_worker_count(tmp_path, written, now, universal):
    write_checkpoint_files(tmp_path, ranks=written[1], zero_stage=written[0])
    plan = plan_resume(tmp_path, zero_stage=now[0], world_size=now[1])
    assert (plan.step, plan.universal) == (20, universal)
    assert plan.load_tag == ("universal-step00000020" if universal else "step00000020")


def test_processes_sharing_a_copy_build_it_once(tmp_path):
    """build_once (a node's universal conversion, a URL store's checkpoint download): of four
    processes at once, one builds; another stamp, or a build killed before its marker, builds
    again."""
    import multiprocessing

    folder, builds = tmp_path / "copy", tmp_path / "builds.log"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(_build_slowly, [(folder, "step10")] * 4)
    assert builds.read_text() == "step10\n" and (folder / BUILT).read_text() == "step10"

    _build_slowly(folder, "step20")  # a newer checkpoint replaces the copy
    _build_slowly(folder, "step20")  # found done
    assert builds.read_text() == "step10\nstep20\n" and (folder / "part").is_file()
    (folder / BUILT).unlink()  # killed midway
    _build_slowly(folder, "step20")
    assert builds.read_text() == "step10\nstep20\nstep20\n" and (folder / BUILT).is_file()


def _build_slowly(folder: Path, stamp: str) -> None:
    import time

    def build(into: Path) -> None:
        into.mkdir()
        time.sleep(0.2)  # the others arrive while this one builds
        (into / "part").write_text(stamp)
        with open(into.parent / "builds.log", "a") as log:
            log.write(stamp + "\n")

    build_once(folder, stamp, build)


@pytest.mark.parametrize("written, now, message", [
    ((0, 1), (1, 1), "written without ZeRO and this run has ZeRO stage 1"),
    ((2, 2), (0, 2), "written under ZeRO and this run has no ZeRO"),
    ((1, 2), (3, 2), "ZeRO stage 1 or 2 and this run has stage 3"),
    ((3, 2), (2, 1), "ZeRO stage 3 and this run has stage 2"),
])
def test_a_zero_stage_deepspeed_cannot_bridge_is_one_line(tmp_path, written, now, message):
    write_checkpoint_files(tmp_path, ranks=written[1], zero_stage=written[0])
    with pytest.raises(UserError, match=message) as err:
        plan_resume(tmp_path, zero_stage=now[0], world_size=now[1])
    assert "set resources.zero_stage back, or delete" in str(err.value)
    assert "\n" not in str(err.value)


def test_no_checkpoint_no_resume_plan(tmp_path):
    assert plan_resume(tmp_path, zero_stage=1, world_size=2) is None


# ---------------------------------------------------------------- `scaling train` arguments


def test_spec_in_the_run_store_uses_the_sweeps_cache(tmp_path):
    from trainers.cli import _store_cache

    spec = tmp_path / "outputs" / "demo" / "runs" / "ar-C1e11-L2d16-abc" / "spec.json"
    assert _store_cache(spec) == tmp_path / "outputs" / ".cache"
    assert _store_cache(tmp_path / "elsewhere" / "spec.json") == Path("outputs") / ".cache"


@pytest.mark.parametrize("argv, message", [
    (["--spec", "s.json", "sweep.yaml"], "not both"),
    ([], "give a sweep file and --run-id"),
    (["sweep.yaml"], "give a sweep file and --run-id"),
    (["--spec", "/no/such/spec.json"], "no such file"),
])
def test_train_arguments_fail_with_one_line(argv, message):
    import argparse

    from trainers.cli import add_train_arguments, resolve_run

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    with pytest.raises(UserError, match=message):
        resolve_run(parser.parse_args(argv))


def test_unknown_run_id_suggests_the_plan(tmp_path):
    import argparse

    from trainers.cli import add_train_arguments, resolve_run

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    sweep = Path(__file__).resolve().parents[2] / "sweeps" / "demo.yaml"
    with pytest.raises(UserError, match="is not a run of .*scaling plan"):
        resolve_run(parser.parse_args([str(sweep), "--run-id", "nope"]))


@pytest.mark.parametrize("scale", [3.0, 0.01])  # clipped, and left alone (norm below max_norm)
def test_clip_gradients_is_the_usual_global_norm_clip(scale):
    """The sync-free clip every ZeRO-0 run uses (trainers/engine.clip_gradients) against torch's reference
    clip_grad_norm_, which has DeepSpeed's formula: min(1, max_norm / (norm + 1e-6))."""
    import torch

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in [(5, 3), (7,), (2, 2, 2), (4,)]]
    for p in ours[:3]:  # the last has no gradient, as a frozen parameter
        p.grad = scale * torch.randn_like(p)
    reference = [p.detach().clone().requires_grad_() for p in ours]
    for r, p in zip(reference, ours):
        r.grad = None if p.grad is None else p.grad.clone()
    norm = clip_gradients(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(reference, 1.0, foreach=False)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    for p, r in zip(ours[:3], reference[:3]):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
    assert ours[3].grad is None


# Three optimizer steps of 2 micro-batches through the real DeepSpeed engine, in a fresh process
# (DeepSpeed initialises once per process), counting the accelerator's device synchronisations.
# argv[1]: JSON merged into the run's DeepSpeed config, as resources.deepspeed_overrides.
COUNT_SYNCS = """
import json, sys
import numpy as np
from pathlib import Path
from scaling.schema import Recipe, Resources
from trainers.backbone import build_model
from trainers.data import PreparedData
from trainers.dist import import_deepspeed, prepare_process
from trainers.engine import (LoopConfig, LoopState, build_deepspeed_config, initialize_engine,
                             plan_batches, train_steps)
from trainers.families import build_family
prepare_process(1, use_gpu=False)
deepspeed = import_deepspeed(1, "cpu")
from deepspeed.accelerator import get_accelerator
accelerator, calls = get_accelerator(), []
synchronize = accelerator.synchronize
accelerator.synchronize = lambda *a, **k: calls.append(1) or synchronize(*a, **k)
blocks = np.random.default_rng(0).integers(2, 64, size=(16, 16)).astype(np.int32)
data = PreparedData(Path("."), blocks, blocks[:1], 1.0, 1, 0, 64, 0.0, "test", np.ones(1, np.int64))
recipe = Recipe(global_batch_seqs=8, micro_batch_seqs=4, seq_len=16)
plan = plan_batches(8, 4, 1)
config = build_deepspeed_config(recipe, Resources(deepspeed_overrides=json.loads(sys.argv[1])),
                                plan, "fp32")
model = build_model(1, 8, 1, 64, attention="bidirectional", mask_token_id=1)
engine, optimizer = initialize_engine(deepspeed, model, recipe, config, "cpu")
family = build_family("mdlm", {}, vocab_size=64, mask_token_id=1)
class Null:
    def write(self, rows): pass
loop = LoopConfig(total_steps=3, warmup_steps=0, lr_peak=1e-3, lr_min=1e-4, seed=1, seq_len=16,
                  global_batch_seqs=8, log_every_steps=3, checkpoint_every_steps=0, flops_per_step=1)
calls.clear()  # deepspeed.initialize synchronises as it broadcasts the weights: once, not per step
train_steps(engine, optimizer, family, data, loop, plan, rank=0, device="cpu", precision="fp32",
            state=LoopState(step=0), metrics=Null())
print(json.dumps({"syncs": len(calls)}))
"""


def _device_syncs(overrides: dict) -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", COUNT_SYNCS, json.dumps(overrides)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["syncs"]


def test_the_training_loop_never_waits_for_the_device():
    """DeepSpeed's throughput timer (on by default) synchronises the device in every forward and
    every engine.step once two optimizer steps are done: on a GPU the queue drains and the GPU idles
    while the host prepares the next micro-batch. Our config turns it off; turned back on, the count
    shows it (the planted truth that this test can see a sync at all)."""
    assert _device_syncs({}) == 0
    assert _device_syncs({"timers": {"throughput": {"enabled": True}}}) > 0
