"""Periodic training checkpoints: save, find the latest, resume, prune.

Layout under <run_dir>/checkpoints/:
    step00000120/        DeepSpeed's own checkpoint (model, optimizer incl. ZeRO shards, client state)
    latest.json          {"tag": "step00000120", "step": 120}: written atomically after a save is
                         complete, so a process killed mid-save resumes from the previous one.

DeepSpeed's save_checkpoint handles ZeRO-partitioned optimizer state on any number of workers, which
a hand-rolled torch.save would not. Its own `latest` file is not used (it is written in place).
Only the newest `keep` checkpoints stay on disk. The run's RNG needs no saving: every random stream
of a step is seeded from (seed, step) (trainers/engine.py), so resuming at step s replays it exactly.

Resources are not part of a run's identity (scaling/runspec.py), so a run may be resumed with
another worker count or ZeRO stage than it was checkpointed with (a cluster that shrank or grew).
ZeRO 1-3 optimizer state is sharded per data-parallel rank, and DeepSpeed refuses to load shards
into another number of ranks; its universal checkpoint format (deepspeed.checkpoint.ds_to_universal:
one folder per parameter with its fp32 value and Adam moments) loads into any number of ranks.
`plan_resume` says which way a checkpoint loads; `universal_copy` converts it once per folder,
beside the original, as `universal-<tag>/`, removed by the next save. A checkpoint without ZeRO
(stage 0) holds the whole optimizer state, which loads into any worker count. Changing the ZeRO
stage is refused in one line where DeepSpeed has no path: between stage 0 and ZeRO (whole against
partitioned optimizer state), and into or out of ZeRO-3 (its checkpoints name their files per rank,
and the universal copy keeps those names); stages 1 and 2 share one format.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scaling.locks import flock
from trainers.records import atomic_write_json

LATEST = "latest.json"
KEEP = 2  # the newest, plus the one before in case the newest is damaged
UNIVERSAL_PREFIX = "universal-"
_OPTIMIZER_SHARDS = "*zero_pp_rank_*_optim_states.pt"  # ZeRO 1-3, one per data-parallel rank
_ZERO3_MODEL_SHARDS = "zero_pp_rank_*_model_states.pt"  # ZeRO-3 partitions the weights too
BUILT = "built"  # written last into a copy made by build_once: its stamp, when it is complete


def checkpoint_tag(step: int) -> str:
    return f"step{step:08d}"


def checkpoint_interval(every_steps: int | None, total_steps: int) -> int:
    """Steps between checkpoints: recipe value; None -> about 10 per run; 0 -> never (returns 0)."""
    if every_steps is None:
        return max(1, total_steps // 10)
    return every_steps


def latest_checkpoint(root: Path) -> dict[str, Any] | None:
    """{"tag", "step"} of the newest complete checkpoint, or None."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    info = json.loads(pointer.read_text())
    return info if (Path(root) / info["tag"]).is_dir() else None


def save_checkpoint(engine, root: Path, step: int, client_state: dict[str, Any], *,
                    is_main: bool, keep: int = KEEP) -> None:
    """Save after `step` optimizer steps (all ranks call this), then point latest.json at it."""
    root = Path(root)
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(root), tag=tag, client_state={**client_state, "step": step},
                           save_latest=False)
    if not is_main:
        return
    atomic_write_json(root / LATEST, {"tag": tag, "step": step})
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))
    for old in tags[:-keep] if keep > 0 else tags:
        if old != tag:
            shutil.rmtree(root / old, ignore_errors=True)
    for copy in root.glob(UNIVERSAL_PREFIX + "*"):  # the new checkpoint supersedes what was resumed
        shutil.rmtree(copy, ignore_errors=True)
    for lock in root.glob(f".{UNIVERSAL_PREFIX}*.lock"):
        lock.unlink(missing_ok=True)


@dataclass(frozen=True)
class ResumePlan:
    tag: str  # the newest checkpoint's
    step: int
    universal: bool  # load its universal copy; DeepSpeed must be configured for the format

    @property
    def load_tag(self) -> str:
        return UNIVERSAL_PREFIX + self.tag if self.universal else self.tag


def zero_shards(tag_dir: Path) -> tuple[int, bool]:
    """(data-parallel ranks whose ZeRO optimizer shards the checkpoint holds, 0 without ZeRO;
    whether it was written under ZeRO-3)."""
    tag_dir = Path(tag_dir)
    return len(list(tag_dir.glob(_OPTIMIZER_SHARDS))), any(tag_dir.glob(_ZERO3_MODEL_SHARDS))


def choose_resume(tag_dir: Path, n_shards: int, written_zero3: bool, zero_stage: int,
                  world_size: int) -> bool:
    """Whether a checkpoint with `n_shards` optimizer shards (ZeRO-3 or not) must load through the
    universal format into `world_size` ranks at `zero_stage` (pure); raise UserError where no format
    bridges the two."""
    from scaling.errors import UserError

    fix = f"set resources.zero_stage back, or delete {Path(tag_dir).parent} to restart the run"
    if (n_shards == 0) != (zero_stage == 0):
        written, now = ("without ZeRO", f"ZeRO stage {zero_stage}") if n_shards == 0 else \
            ("under ZeRO", "no ZeRO (stage 0)")
        raise UserError(f"checkpoint {tag_dir} was written {written} and this run has {now}: "
                        f"DeepSpeed cannot move optimizer state between the two; {fix}")
    if n_shards and written_zero3 != (zero_stage == 3):
        written = "3" if written_zero3 else "1 or 2"
        raise UserError(f"checkpoint {tag_dir} was written under ZeRO stage {written} and this run "
                        f"has stage {zero_stage}: DeepSpeed resumes ZeRO-3 checkpoints under ZeRO-3 "
                        f"only; {fix}")
    return n_shards != 0 and n_shards != world_size


def plan_resume(root: Path, zero_stage: int, world_size: int) -> ResumePlan | None:
    """How this run loads its newest checkpoint (module docstring), or None when there is none."""
    info = latest_checkpoint(root)
    if info is None:
        return None
    tag_dir = Path(root) / info["tag"]
    return ResumePlan(info["tag"], info["step"],
                      choose_resume(tag_dir, *zero_shards(tag_dir), zero_stage, world_size))


def universal_copy(root: Path, tag: str) -> Path:
    """`root/universal-<tag>/`, converted from `root/<tag>/` unless a finished copy is there.

    Ranks sharing a folder convert it once: the first takes a lock, the others wait for it and find
    the copy done. The conversion runs in this process (one extract worker: DeepSpeed's pool of
    processes is no use for the small files of a CPU run, nor safe inside a Ray or torchrun worker)
    and prints to stderr, where the run's log is."""
    from deepspeed.checkpoint import ds_to_universal

    root = Path(root)

    def convert(target: Path) -> None:
        args = _converter_args(input_folder=str(root / tag), output_folder=str(target))
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            ds_to_universal.main(args)
        (root / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; ours is latest.json
        print(f"converted checkpoint {tag} to DeepSpeed's universal format in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)

    return build_once(root / (UNIVERSAL_PREFIX + tag), tag, convert)


def universal_copy_ranked(root: Path, tag: str, is_main: bool) -> Path:
    """universal_copy on every rank, global rank 0 first. Ranks that share `root` with it (a run
    store on a filesystem that several nodes mount) then find its copy done, so the conversion
    never relies on flock across nodes (Lustre ignores it without its `flock` mount option); ranks
    with a node copy of their own (a store at a URL: scaling/staging.py) convert it under a
    node-local lock."""
    from trainers.dist import barrier

    if is_main:
        universal_copy(root, tag)
    barrier()
    return universal_copy(root, tag)  # found done wherever rank 0 converted it


def build_once(folder: Path, stamp: str, build: Callable[[Path], None]) -> Path:
    """`folder`, made by `build(folder)` unless a complete copy stamped `stamp` is there: the
    processes that share it (the ranks of a node) build it once. The first to take the lock beside
    it builds; the others wait and find it done. A folder with another stamp, or a build killed
    midway (no marker: it is written last), is removed and built again."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_of(folder), "w") as lock:
        flock(lock, fcntl.LOCK_EX)
        done = folder / BUILT
        if done.is_file() and done.read_text() == stamp:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        build(folder)
        done.write_text(stamp)
    return folder


def lock_of(folder: Path) -> Path:
    """The lock file of a build_once folder, beside it. It outlives the folder: unlinked while a
    process waits on it, two processes could hold the lock (a universal copy's goes with the run's
    checkpoints folder; scaling/staging.drop_scratch removes a node copy's)."""
    return folder.with_name(f".{folder.name}.lock")


def _converter_args(**folders: str):
    import argparse

    return argparse.Namespace(**folders, num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # our client state has no UC metadata


def with_universal_loading(config: dict[str, Any]) -> dict[str, Any]:
    """A DeepSpeed config that loads checkpoints in the universal format."""
    return {**config, "checkpoint": {**config.get("checkpoint", {}), "load_universal": True}}


def load_checkpoint(engine, root: Path, plan: ResumePlan | None) -> dict[str, Any] | None:
    """Restore model and optimizer as `plan` says; the checkpoint's client state, or None if none."""
    if plan is None:
        return None
    path, client_state = engine.load_checkpoint(str(root), tag=plan.load_tag,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(root) / plan.load_tag}")
    return client_state
