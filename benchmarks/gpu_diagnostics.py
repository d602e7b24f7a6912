"""train_throughput.py's GPU diagnostics, run on the live engine after the timed rounds: DeepSpeed's
throughput timer switched on and off (--timer-ab), the device syncs of one optimizer step
(--sync-report), and the kernel time per category (--profile-steps; every kernel to a CSV with
--profile-csv)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from throughput_loops import NullMetrics


def set_throughput_timer(engine, enabled: bool) -> None:
    """DeepSpeed's throughput timer on or off in a live engine (its config is read at every start
    and stop). On, it synchronises the device in every forward and engine.step, as it does by
    default once two optimizer steps are done (trainers/engine.py turns it off)."""
    timer = engine.tput_timer
    timer.config = type(timer.config)(enabled=enabled, synchronized=True)
    timer.started = False
    timer.global_step_count = max(timer.global_step_count, timer.start_step)


def sync_report(engine, optimizer, family, data, loop_config, plan, device, precision,
                first: int) -> None:
    """The device synchronisations of one optimizer step of the DeepSpeed loop, each a point where
    the GPU's queue drains and the GPU idles until the host queues again: explicit ones (the
    accelerator's synchronize: DeepSpeed's throughput timer) and the implicit ones torch's sync
    debug mode sees (.item(), bool() of a device tensor, pageable copies, nonzero), by place.
    The loop reads its loss back once at the end of the step (train_steps' log row): one expected."""
    import collections
    import warnings

    import torch
    from deepspeed.accelerator import get_accelerator

    from trainers.engine import LoopState, train_steps

    accelerator, explicit = get_accelerator(), []
    synchronize = accelerator.synchronize
    accelerator.synchronize = lambda *a, **k: explicit.append(1) or synchronize(*a, **k)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_steps(engine, optimizer, family, data, loop_config(first + 1), plan, rank=0,
                        device=device, precision=precision, state=LoopState(step=first),
                        metrics=NullMetrics())
    finally:
        torch.cuda.set_sync_debug_mode(0)
        accelerator.synchronize = synchronize
    implicit = [w for w in caught if "synchroniz" in str(w.message)]
    places = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in implicit)
    print(f"syncs_per_step explicit {len(explicit)} implicit {len(implicit)} "
          f"({plan.accumulation_steps} micro-batches)", flush=True)
    for place, count in places.most_common(6):
        print(f"  {count}x {place}")


OTHER = "other (elementwise, norms, copies)"


def kernel_category(name: str) -> str:
    lower = name.lower()
    for key, words in (("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
                       ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
                       ("optimizer", ("adam", "multi_tensor", "foreach")),
                       ("loss", ("log_softmax", "softmax", "nll", "cross_entropy"))):
        if any(w in lower for w in words):
            return key
    return OTHER


def profile_steps(args, engine, optimizer, family, data, loop_config, plan, device, precision,
                  first: int) -> None:
    """CUDA time per kernel over `args.profile_steps` steps of the DeepSpeed loop: the top
    kernels and totals per category, printed as a table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainers.engine import LoopState, train_steps

    last = first + args.profile_steps
    torch.cuda.synchronize()
    wall = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        train_steps(engine, optimizer, family, data, loop_config(last), plan, rank=0, device=device,
                    precision=precision, state=LoopState(step=first), metrics=NullMetrics())
        host = time.perf_counter() - wall  # until the host has queued every kernel
        torch.cuda.synchronize()
    wall = time.perf_counter() - wall
    rows = [(e.key, e.device_time_total, e.count) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]
    total = sum(t for _, t, _ in rows)
    n_micro = args.profile_steps * plan.accumulation_steps  # forward/backward passes profiled
    per_step = lambda us: ms_per_micro_batch(us, n_micro)  # noqa: E731
    print(f"profile: {args.profile_steps} steps x {plan.accumulation_steps} micro-batches; per "
          f"micro-batch: wall {1e3 * wall / n_micro:.1f} ms, kernels {per_step(total):.1f} ms "
          "(the rows below are ms per micro-batch too)")
    # Where the idle GPU time comes from: a host that queues kernels no faster than they run (host
    # time near wall: launch-bound), or many short kernels (a gap of a few us each on the stream).
    print(f"profile: per micro-batch: host {1e3 * host / n_micro:.1f} ms (queueing, with the "
          f"profiler's overhead), {sum(c for *_, c in rows) / n_micro:.0f} kernels")
    categories: dict[str, float] = {}
    for key, t, _ in rows:
        categories[kernel_category(key)] = categories.get(kernel_category(key), 0.0) + t
    for key, t in sorted(categories.items(), key=lambda kv: -kv[1]):
        print(f"  {key:<36s} {per_step(t):7.2f} ms/step {100 * t / total:5.1f}%")
    ranked = sorted(rows, key=lambda r: -r[1])
    # The elementwise kernels are what the remaining route to 35% MFU would fuse by hand
    # (GPU_NOTES.md), and the overall top is all matmuls and attention: list them apart.
    elementwise = [r for r in ranked if kernel_category(r[0]) == OTHER]
    for title, listed in ((None, ranked), (f"  top of {OTHER}:", elementwise)):
        if title:
            print(title)
        for key, t, count in listed[:args.profile_top]:
            print(f"    {per_step(t):7.2f} ms {count / n_micro:6.1f}x  {key[:100]}")
    if args.profile_csv:
        write_kernel_table(args.profile_csv, ranked, n_micro)


def write_kernel_table(path: str, ranked: list[tuple[str, float, int]], n_micro: int) -> None:
    """Every profiled kernel as CSV (name, category, ms and launches per micro-batch), for what
    the printed top rows leave out."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["kernel", "category", "ms_per_micro_batch", "launches_per_micro_batch"])
        for key, t, count in ranked:
            out.writerow([key, kernel_category(key), f"{ms_per_micro_batch(t, n_micro):.4f}",
                          f"{count / n_micro:g}"])


def ms_per_micro_batch(total_us: float, n_micro: int) -> float:
    """A profiler total (microseconds over n_micro forward/backward passes) in ms per pass."""
    return total_us / 1e3 / n_micro
