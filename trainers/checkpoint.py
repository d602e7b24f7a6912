"""Periodic training checkpoints: save, find the latest, resume, prune.

Layout under <run_dir>/checkpoints/:
    step00000120/        DeepSpeed's own checkpoint (model, optimizer incl. ZeRO shards, client state)
    latest.json          {"tag": "step00000120", "step": 120}: written atomically after a save is
                         complete, so a process killed mid-save resumes from the previous one.

DeepSpeed's save_checkpoint handles ZeRO-partitioned optimizer state on any number of workers, which
a hand-rolled torch.save would not. Its own `latest` file is not used (it is written in place).
Only the newest `keep` checkpoints stay on disk. The run's RNG needs no saving: every random stream
of a step is seeded from (seed, step) (trainers/engine.py), so resuming at step s replays it exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trainers.records import atomic_write_json

LATEST = "latest.json"
KEEP = 2  # the newest, plus the one before in case the newest is damaged


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


def _check_world_size(engine, tag_dir: Path) -> None:
    """ZeRO 1-2 optimizer shards cannot be loaded by a different number of data-parallel ranks
    (DeepSpeed refuses); say so in one line instead of failing every retry."""
    shards = list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt"))
    world = getattr(engine, "dp_world_size", 1)
    if shards and len(shards) != world:
        from scaling.errors import UserError

        raise UserError(
            f"checkpoint {tag_dir} was written by {len(shards)} data-parallel ranks under ZeRO, "
            f"this run has {world}; set resources.workers back to {len(shards)}, or delete "
            f"{tag_dir.parent} to restart the run")


def load_checkpoint(engine, root: Path) -> dict[str, Any] | None:
    """Restore model and optimizer from the newest checkpoint; its client state, or None if none."""
    info = latest_checkpoint(root)
    if info is None:
        return None
    _check_world_size(engine, root / info["tag"])
    path, client_state = engine.load_checkpoint(str(root), tag=info["tag"], load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / info['tag']}")
    return client_state
