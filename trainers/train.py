"""Train one run: RunSpec in, run directory out. The single entry point of every executor.

    train_run(spec, run_dir) -> the result record (also written to run_dir/result.json)

DeepSpeed initialises once per process, so each run needs a process of its own: the Ray runner
starts a fresh worker per run, and `python -m trainers.train --spec SPEC.json --out DIR` (or
`scaling train`) runs one from a shell or a test.

The run directory:
    spec.json        the RunSpec (run_id, config_hash included)
    metrics.jsonl    the loss curve, one row per log_every_steps
    checkpoints/     periodic DeepSpeed checkpoints (trainers/checkpoint.py); removed once done
    model/           the final model (save_pretrained, safetensors) and its tokenizer
    result.json      the result record, written last and atomically: present = run finished

Order of work: everything the user can get wrong (family, batch split, corpus, vocabulary, sequence
length against the validation split) is checked before DeepSpeed is imported and before anything is
written to the run directory, so bad input fails with one line and leaves nothing behind. A run
directory that already holds checkpoints of the same run resumes from the newest; one that holds a
finished result returns it without training.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from scaling.errors import UserError
from scaling.runspec import RunSpec
from trainers.families.registry import get_entry
from trainers.records import (CHECKPOINT_DIR, METRICS_FILE, MODEL_DIR, RESULT_FILE, SPEC_FILE,
                              MetricsLog, atomic_write_json, atomic_write_text, build_result)

DEFAULT_CACHE = Path("outputs") / ".cache"  # the default sweep's <output_dir>/.cache


def process_start_time() -> float:
    """When this process started (epoch seconds): setup_seconds counts from here.

    On Linux from /proc (start ticks vs uptime, 10 ms resolution): psutil's create_time adds the
    boot time, which /proc/stat rounds to whole seconds, and was off by ~1 s on a test VM."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime_s - start_s)
    except (OSError, ValueError, IndexError):  # not Linux: count from the first call instead
        return time.time()


@dataclass
class SetupTimes:
    """Seconds spent on each part of setup (and on checkpoints), for the result record."""

    process_start: float  # epoch seconds
    entered: float  # epoch seconds when train_run began
    imports_s: float = 0.0  # torch, transformers (the backbone), the trainer modules
    data_s: float = 0.0
    model_s: float = 0.0
    deepspeed_import_s: float = 0.0
    engine_init_s: float = 0.0
    resume_s: float = 0.0
    checkpoint_s: float = 0.0  # not setup: saving checkpoints during the loop (inside wall_seconds)

    def breakdown(self) -> dict[str, float]:
        return {"process_to_train_run": self.entered - self.process_start, "imports": self.imports_s,
                "data": self.data_s, "model": self.model_s, "deepspeed_import": self.deepspeed_import_s,
                "engine_init": self.engine_init_s, "resume": self.resume_s}


class ForeignRunError(UserError):
    """A run folder, or the checkpoints to resume from, belong to another run. `what` lets a run
    store at a URL name its own folder rather than the node's scratch copy (scaling/staging.py)."""

    def __init__(self, folder, what: str):
        self.folder, self.what = folder, what
        super().__init__(f"{folder} holds {what}; give an empty --out directory or delete it")

    def __reduce__(self):  # picklable across processes (Ray), though __init__ takes two arguments
        return type(self), (self.folder, self.what)


def _check_existing(run_dir: Path, spec: RunSpec) -> dict | None:
    """The finished result of this run if run_dir holds one; UserError if run_dir is another run's."""
    import json

    for name in (RESULT_FILE, SPEC_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if record.get("config_hash") != spec.config_hash:
            raise ForeignRunError(run_dir, f"another run ({record.get('run_id')})")
        if name == RESULT_FILE:
            return record
    return None


def train_run(spec: RunSpec, run_dir: Path, *, progress: bool = True,
              cache_root: Path | None = None,
              on_checkpoint: Callable[[int, bool], None] | None = None,
              resume_root: Path | None = None) -> dict:
    """Train `spec` into `run_dir` (resuming from its newest checkpoint) and return the result record.

    on_checkpoint(step, is_main) runs on every rank after each checkpoint is saved (a run store at
    a URL pushes it there: scaling/staging.py). resume_root, when given, is the checkpoint folder
    to resume from instead of run_dir's own (a URL store's checkpoint, downloaded once per node and
    read by every rank there); new checkpoints still go to run_dir."""
    setup = SetupTimes(process_start_time(), time.time())
    run_dir = Path(run_dir)
    existing = _check_existing(run_dir, spec)
    if existing is not None:
        return existing
    ctx = _prepare(spec, run_dir, setup, Path(cache_root or DEFAULT_CACHE))
    ctx.on_checkpoint, ctx.resume_root = on_checkpoint, Path(resume_root or ctx.ckpt_root)
    family, model = _build_model(ctx)
    engine, optimizer = _build_engine(ctx, model)
    state = _resume(ctx, engine)
    outcome, train_loss = _train(ctx, engine, optimizer, family, state, progress)
    return _finish(ctx, engine, family, model, outcome, train_loss, resumed_from=state.step)


@dataclass
class _Context:
    """What every stage of a run needs, gathered by _prepare."""

    spec: RunSpec
    run_dir: Path
    setup: SetupTimes
    entry: Any  # the family's registry entry
    proc: Any  # trainers.dist.ProcessInfo
    plan: Any  # trainers.engine.BatchPlan
    precision: str
    data: Any  # trainers.data.PreparedData
    val_blocks: Any  # LongTensor[n, L]
    val_n_bytes: int
    deepspeed: Any = None
    resume_plan: Any = None  # trainers.checkpoint.ResumePlan, once the engine is configured
    on_checkpoint: Callable[[int, bool], None] | None = None
    resume_root: Path | None = None  # where the checkpoint to resume from is (train_run)

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR


def _prepare(spec: RunSpec, run_dir: Path, setup: SetupTimes, cache_root: Path) -> _Context:
    """Everything a user can get wrong, checked before DeepSpeed starts or anything is written."""
    try:
        entry = get_entry(spec.family)
        entry.parse_options(dict(spec.options))
    except KeyError as err:
        raise UserError(str(err.args[0])) from None
    except ValidationError as err:  # a hand-edited spec.json; sweep files are checked at load
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "options"
        raise UserError(f"options of family {spec.family}: {where}: {problem['msg']}") from None
    recipe, resources = spec.recipe, spec.resources

    t = time.perf_counter()
    from trainers.data import prepare_data, validation_blocks, validation_n_bytes
    from trainers.dist import cuda_available, prepare_process
    from trainers.engine import plan_batches, resolve_precision

    setup.imports_s = time.perf_counter() - t
    proc = prepare_process(resources.cpus_per_worker,
                           use_gpu=resources.gpus_per_worker > 0 and cuda_available())
    plan = plan_batches(recipe.global_batch_seqs, recipe.micro_batch_seqs, proc.world_size)

    t = time.perf_counter()
    data = prepare_data(spec.data, recipe.seq_len, cache_root)
    val_blocks = validation_blocks(data, spec.evaluation.n_tokens)  # raises when the split is too short
    if data.vocab_size != spec.vocab_size:
        raise UserError(f"prepared data has vocabulary {data.vocab_size}, the run expects "
                        f"{spec.vocab_size}; re-plan the run from its sweep")
    setup.data_s = time.perf_counter() - t
    t = time.perf_counter()
    import trainers.backbone  # noqa: F401 - transformers, the largest import: after the data checks
    setup.imports_s += time.perf_counter() - t
    return _Context(spec, run_dir, setup, entry, proc, plan,
                    resolve_precision(recipe.precision, proc.device), data, val_blocks,
                    validation_n_bytes(data, spec.evaluation.n_tokens))


def _build_model(ctx: _Context):
    """(family, freshly initialised backbone); the initial weights are a function of the seed."""
    import torch

    from trainers import kernels
    from trainers.backbone import build_model
    from trainers.engine import derive_seed
    from trainers.families import build_family

    spec, shape, t = ctx.spec, ctx.spec.shape, time.perf_counter()
    family = build_family(spec.family, dict(spec.options), vocab_size=spec.vocab_size,
                          mask_token_id=ctx.data.mask_token_id)
    torch.manual_seed(derive_seed(spec.recipe.seed, 0))
    model = build_model(shape.n_layers, shape.d_model, shape.n_heads, spec.vocab_size,
                        attention=ctx.entry.attention, mask_token_id=ctx.data.mask_token_id)
    if kernels.configure(spec.resources.compile, ctx.proc.device, fused_head=spec.resources.fused_head):
        kernels.compile_model(model)  # compiled lazily, at the first step
    ctx.setup.model_s = time.perf_counter() - t
    return family, model


def _build_engine(ctx: _Context, model):
    from trainers.checkpoint import plan_resume, universal_copy_ranked, with_universal_loading
    from trainers.dist import import_deepspeed
    from trainers.engine import build_deepspeed_config, initialize_engine

    t = time.perf_counter()
    ctx.deepspeed = import_deepspeed(ctx.proc.world_size, ctx.proc.device)
    _quiet_libraries()
    ctx.setup.deepspeed_import_s = time.perf_counter() - t
    t = time.perf_counter()
    config = build_deepspeed_config(ctx.spec.recipe, ctx.spec.resources, ctx.plan, ctx.precision)
    ctx.resume_plan = plan_resume(ctx.resume_root, ctx.spec.resources.zero_stage, ctx.proc.world_size)
    if ctx.resume_plan is not None and ctx.resume_plan.universal:
        if ctx.proc.is_main:
            print(f"resuming at step {ctx.resume_plan.step} on {ctx.proc.world_size} worker(s), ZeRO "
                  f"stage {ctx.spec.resources.zero_stage}, from a checkpoint of another worker count: "
                  "through DeepSpeed's universal checkpoint format", file=sys.stderr)
        universal_copy_ranked(ctx.resume_root, ctx.resume_plan.tag, ctx.proc.is_main)
        config = with_universal_loading(config)  # another worker count or ZeRO stage (checkpoint.py)
    engine, optimizer = initialize_engine(ctx.deepspeed, model, ctx.spec.recipe, config, ctx.proc.device)
    ctx.setup.engine_init_s = time.perf_counter() - t
    return engine, optimizer


def _quiet_libraries() -> None:
    """DeepSpeed logs its whole config at INFO on every initialize, and transformers draws a bar
    per saved shard; keep warnings only, and our own progress bar."""
    import logging

    from deepspeed.utils import logger
    from transformers.utils import logging as hf_logging

    logger.setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


def _resume(ctx: _Context, engine):
    """The loop state of the newest checkpoint (weights and optimizer restored), else a fresh one."""
    from trainers.checkpoint import load_checkpoint
    from trainers.engine import LoopState

    t = time.perf_counter()
    client_state = load_checkpoint(engine, ctx.resume_root, ctx.resume_plan)
    if client_state and client_state.get("config_hash") != ctx.spec.config_hash:
        raise ForeignRunError(ctx.resume_root, "checkpoints of another run")
    ctx.setup.resume_s = time.perf_counter() - t
    return LoopState.from_client_state(client_state) if client_state else LoopState()


def _train(ctx: _Context, engine, optimizer, family, state, progress: bool):
    """Run the loop with metrics, checkpoints and a progress bar: (LoopOutcome, final train loss)."""
    from trainers.checkpoint import checkpoint_interval, save_checkpoint
    from trainers.engine import LoopConfig, train_steps

    spec, proc = ctx.spec, ctx.proc
    if proc.is_main:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        if not (ctx.run_dir / SPEC_FILE).exists():
            atomic_write_text(ctx.run_dir / SPEC_FILE, spec.to_json())  # as scaling/store.py writes it
    metrics = MetricsLog(ctx.run_dir / METRICS_FILE, resume_step=state.step) if proc.is_main else _NullLog()
    cfg = LoopConfig.from_spec(spec, checkpoint_interval(spec.recipe.checkpoint_every_steps, spec.steps))
    bar = _progress_bar(spec, state.step) if progress and proc.is_main else None

    def save(loop_state) -> None:
        started = time.perf_counter()
        save_checkpoint(engine, ctx.ckpt_root, loop_state.step,
                        {**loop_state.to_client_state(), "config_hash": spec.config_hash},
                        is_main=proc.is_main)
        if ctx.on_checkpoint is not None:
            ctx.on_checkpoint(loop_state.step, proc.is_main)
        ctx.setup.checkpoint_s += time.perf_counter() - started

    def on_log(step: int, loss: float, lr: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(step - bar.n)

    try:
        outcome = train_steps(engine, optimizer, family, ctx.data, cfg, ctx.plan, rank=proc.rank,
                              device=proc.device, precision=ctx.precision, state=state,
                              metrics=metrics, save=save, on_log=on_log)
    finally:
        metrics.close()
        if bar is not None:
            bar.close()
    return outcome, metrics.tail_mean()


def _finish(ctx: _Context, engine, family, model, outcome, train_loss, *, resumed_from: int) -> dict:
    """Validate, save the model, write result.json (rank 0), drop the checkpoints."""
    from trainers import kernels

    t = time.perf_counter()
    val = _evaluate(ctx, engine, family)
    eval_s = time.perf_counter() - t
    _save_model(ctx, engine)
    if not ctx.proc.is_main:  # only rank 0 writes; the others report what they evaluated
        return {"run_id": ctx.spec.run_id, "rank": ctx.proc.rank, "val_loss": val.nats_per_token}
    n_params_total = sum(p.numel() for p in model.parameters()) if ctx.spec.resources.zero_stage < 3 \
        else ctx.spec.n_params_total  # ZeRO-3 leaves placeholders in the module
    record = build_result(
        ctx.spec, device=ctx.proc.device, world_size=ctx.proc.world_size, precision=ctx.precision,
        micro_batch_seqs=ctx.plan.micro_batch_seqs, accumulation_steps=ctx.plan.accumulation_steps,
        n_params_total=n_params_total, train_loss=train_loss, val_nats_per_token=val.nats_per_token,
        val_tokens_scored=val.n_tokens_scored, val_tokens_per_byte=ctx.val_blocks.numel() / ctx.val_n_bytes,
        unigram_entropy_nats=ctx.data.unigram_entropy_nats, data_digest=ctx.data.digest,
        train_wall_s=outcome.train_wall_s,
        setup_s=outcome.first_step_time - ctx.setup.process_start,
        setup_breakdown=ctx.setup.breakdown(), eval_s=eval_s, checkpoint_s=ctx.setup.checkpoint_s,
        resumed_from_step=resumed_from, fast_paths=kernels.fast_paths())
    atomic_write_json(ctx.run_dir / RESULT_FILE, record)
    shutil.rmtree(ctx.ckpt_root, ignore_errors=True)  # the run is done: model/ and result.json remain
    return record


class _NullLog:
    """Metrics sink of ranks other than 0 (only rank 0 writes files)."""

    def write(self, rows) -> None:
        pass

    def close(self) -> None:
        pass

    def tail_mean(self) -> float:
        return math.nan


def _progress_bar(spec: RunSpec, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=spec.steps, initial=initial, desc=spec.run_id, unit="step", dynamic_ncols=True)


def _evaluate(ctx: _Context, engine, family):
    """Validation on the fixed held-out blocks with fixed seeded times (trainers/validate.py).
    Under ZeRO-3 the parameters are partitioned, so the engine (which gathers them) is evaluated."""
    from trainers.engine import autocast_context
    from trainers.validate import evaluate

    model = engine if ctx.spec.resources.zero_stage == 3 else engine.module
    ev = ctx.spec.evaluation
    with autocast_context(ctx.precision, ctx.proc.device):
        return evaluate(model, family, ctx.val_blocks, t_samples=ev.t_samples, seed=ev.seed,
                        batch_seqs=ev.batch_seqs)


def _save_model(ctx: _Context, engine) -> None:
    """save_pretrained (safetensors) + the tokenizer, staged beside run_dir/model and renamed into
    place by rank 0. Under ZeRO-3 every rank joins the gather of the partitioned weights."""
    out = ctx.run_dir / MODEL_DIR
    staging = out.with_name(f".{out.name}.tmp{os.getpid()}")
    module = engine.module
    gather = (ctx.deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
              if ctx.spec.resources.zero_stage == 3 else contextlib.nullcontext())
    with gather:
        if not ctx.proc.is_main:
            return
        for stale in out.parent.glob(f".{out.name}.tmp*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        module.save_pretrained(staging, safe_serialization=True)
    for item in Path(ctx.data.tokenizer_dir).iterdir():
        if item.is_file():
            shutil.copy2(item, staging / item.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.train --spec SPEC.json [--out DIR]`: the same as `scaling train`."""
    import argparse

    from trainers.cli import add_train_arguments, run_train_command

    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return run_train_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
