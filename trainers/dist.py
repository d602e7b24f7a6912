"""Process setup for one training worker: accelerator, rank variables, threads.

DeepSpeed expects a launcher (deepspeed/torchrun/Ray Train) to have set RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them it falls back to MPI discovery and fails. A
run started on its own (`scaling train`, `python -m trainers.train`, a test) is a one-process world,
so those variables are filled in here, each only when the launcher has not set it.

Call `prepare_process` before the first `import deepspeed`: DS_ACCELERATOR is read when DeepSpeed
picks its accelerator.

It also keeps freed memory in the process (`keep_freed_memory`): a training step allocates and
frees the same buffers every step, and glibc's default returns them to the kernel, so every step
starts on fresh, zero-filled pages.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    local_rank: int
    world_size: int
    device: str  # "cpu" or "cuda:<local_rank>"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def find_free_port() -> int:
    """A TCP port free on every interface now (the OS picks it; a tiny race with other processes
    remains)."""
    # Bind on every interface, as torch's TCPStore will: a port free on loopback alone can be
    # taken on the host's address (seen on a Ray node whose Ray Train store held it: EADDRINUSE).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


# glibc mallopt parameters (malloc.h): a heap top of up to 256 MiB is kept on free, and blocks up to
# 32 MiB (glibc's ceiling for this threshold on 64-bit) come from the heap instead of mmap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD_BYTES = 256 << 20
MMAP_THRESHOLD_BYTES = 32 << 20


def keep_freed_memory() -> bool:
    """Stop glibc handing a step's freed buffers back to the kernel; returns whether it applied.

    By default glibc trims the top of the heap once 2x the largest freed mmap block is free (4 MiB
    after the demo's 2 MiB [rows, K] logits), so each step's logits, their gradients and the loss
    temporaries land on pages the kernel must fault in and zero again: 650-2,600 page faults per
    step at the demo's shapes, up to a quarter of a step's time (Duo d8: 18.8 -> 14.5 ms per step;
    benchmarks/cpu_step.py measures it). Numerics are unchanged; the memory kept is at most the
    run's own peak plus TRIM_THRESHOLD_BYTES. Not glibc (macOS, musl): nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                    and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def barrier() -> None:
    """Wait for every rank of a multi-worker run (Ray Train set up the process group); nothing for
    a one-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_process(cpus_per_worker: float, *, use_gpu: bool | None = None) -> ProcessInfo:
    """Set the accelerator, single-process rank variables (when unset), the thread count and the
    allocator's trimming (`keep_freed_memory`)."""
    import torch

    use_gpu = cuda_available() if use_gpu is None else use_gpu
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(find_free_port())
    keep_freed_memory()
    # Fractional CPUs (Ray's cpus_per_worker: 0.5) still get one thread.
    torch.set_num_threads(max(1, int(cpus_per_worker)))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if use_gpu:
        torch.cuda.set_device(local_rank)
    return ProcessInfo(rank, local_rank, world_size, f"cuda:{local_rank}" if use_gpu else "cpu")


def import_deepspeed(world_size: int, device: str = "cpu"):
    """Import DeepSpeed without its shared-memory CPU all-reduce kernel where it is no use.

    On CPU DeepSpeed JIT-compiles a C++ shared-memory collective (`deepspeed_shm_comm`) the first
    time a process group starts: about a minute of g++ per fresh machine (CI, every Ray node), and
    a compile killed midway leaves a lock that hangs later runs. A one-process world has nothing to
    reduce, and CPU workers reduce their (small) gradients through gloo well enough, so it is
    switched off for both; GPU runs use NCCL and never build it. DeepSpeed keeps
    `__compatible_ops__` as one module-level dict precisely so that edits like this persist.
    """
    import deepspeed

    if world_size == 1 or device == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed
