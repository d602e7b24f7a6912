"""What a run leaves behind for the analysis: the loss curve (metrics.jsonl) and one result record.

Results are structured records, never scraped logs (STYLE 9). result.json is written once, at the
very end, atomically (temp file + os.replace): it exists only for a finished run, and a reader never
sees half of it. metrics.jsonl is appended as training goes; a resumed run first cuts the rows
logged after its checkpoint so the curve has no duplicated steps.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
SPEC_FILE = "spec.json"  # as scaling/store.py writes it
MODEL_DIR = "model"  # save_pretrained weights and the tokenizer
CHECKPOINT_DIR = "checkpoints"  # trainers/checkpoint.py
SCHEMA_VERSION = 1
LIBRARIES = ("torch", "deepspeed", "transformers", "datasets", "ray", "tokenizers")
PACKAGE = "isoflop-diffusion"  # pyproject's project name
TAIL_ROWS = 5  # final train loss = mean of the last 5 logged rows (smooths one noisy batch)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a process killed mid-write) is dropped."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Append-only JSONL of logged training steps, kept open for the whole run."""

    def __init__(self, path: Path, *, resume_step: int):
        self.path = Path(path)
        kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self.losses = [row["loss"] for row in kept if row.get("loss") is not None]
        self._handle = open(self.path, "a")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._handle.write(json.dumps(row) + "\n")
            if row.get("loss") is not None:
                self.losses.append(row["loss"])
        self._handle.flush()

    def tail_mean(self, n_rows: int = TAIL_ROWS) -> float:
        """Mean loss of the last `n_rows` logged rows: the run's final training loss."""
        tail = self.losses[-n_rows:]
        return sum(tail) / len(tail) if tail else float("nan")

    def close(self) -> None:
        self._handle.close()


def code_version(repo: Path | None = None) -> str:
    """`git describe` of the source tree when it is a git checkout, else the installed version."""
    repo = Path(repo or Path(__file__).resolve().parents[1])
    if (repo / ".git").exists():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo,
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return f"git:{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"{PACKAGE}=={metadata.version(PACKAGE)}"
    except metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def host_info() -> dict[str, str]:
    """Where the run trained. cpu_capability is the vector instruction set torch's CPU kernels
    dispatch to (AVX2, AVX512, ...): their rounding differs, so CPU runs on two machines end at
    slightly different losses (README, "The demo")."""
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def build_result(spec, *, device: str, world_size: int, precision: str, micro_batch_seqs: int,
                 accumulation_steps: int, n_params_total: int, train_loss: float,
                 val_nats_per_token: float, val_tokens_scored: int, val_tokens_per_byte: float,
                 unigram_entropy_nats: float, data_digest: str, train_wall_s: float, setup_s: float,
                 setup_breakdown: dict[str, float], eval_s: float, checkpoint_s: float,
                 resumed_from_step: int, fast_paths: dict[str, Any]) -> dict[str, Any]:
    """The result record of a finished run: what the analysis reads (scaling/store.py flattens it).

    Losses are nats per token: val_loss is the exact NLL (AR) or the NELBO (diffusion families) on
    the fixed validation set; train_loss is the family's training objective (for MDLM low_var not a
    bound, so not comparable to val_loss). val_bits_per_byte = val_loss x tokens per byte / ln 2,
    per token rather than per scored token (AR scores L - 1 of a block's L tokens, which together
    cover the bytes). setup_seconds runs from process start to the first step: the runner's
    overhead per run. Timings of a resumed run add up its sessions (checkpointed loop time).
    """
    import torch

    on_gpu = device.startswith("cuda")
    d, k = spec.shape.d_model, spec.vocab_size
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "config_hash": spec.config_hash,
        "spec": spec.model_dump(mode="json"),
        "family": spec.family,
        "label": spec.label,
        "flops_budget": spec.flops_budget,
        "flops_convention": spec.flops_convention,
        "fwd_flops_per_token": spec.fwd_flops_per_token,
        "n_params": n_params_total - k * d,  # the paper's non-embedding count, of the model built
        "n_params_total": n_params_total,
        "n_tokens": spec.n_tokens,
        "tokens_per_param": spec.tokens_per_param,
        "achieved_flops": spec.achieved_flops,
        "steps": spec.steps,
        "train_loss": train_loss,
        "val_loss": val_nats_per_token,
        "val_tokens_scored": val_tokens_scored,
        "val_bits_per_byte": val_nats_per_token * val_tokens_per_byte / math.log(2),
        "unigram_entropy_nats": unigram_entropy_nats,
        "tokens_per_second": spec.n_tokens / train_wall_s if train_wall_s > 0 else None,
        "wall_seconds": train_wall_s,
        "setup_seconds": setup_s,
        "setup_breakdown": setup_breakdown,
        "eval_seconds": eval_s,
        "checkpoint_seconds": checkpoint_s,  # this session's, part of wall_seconds
        "resumed_from_step": resumed_from_step,
        "peak_memory_bytes": peak_rss_bytes(),  # host RSS high-water mark
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
        "device": torch.cuda.get_device_name() if on_gpu else device,
        "precision": precision,
        # what resources.compile / fused_head resolved to on this device: they round differently
        "fast_paths": fast_paths,
        "world_size": world_size,
        "micro_batch_seqs": micro_batch_seqs,
        "accumulation_steps": accumulation_steps,
        "zero_stage": spec.resources.zero_stage,
        "data_digest": data_digest,
        "code_version": code_version(),
        "libraries": library_versions(),
        **host_info(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
