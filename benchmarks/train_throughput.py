"""Training throughput: the DeepSpeed engine against a plain PyTorch loop, and MFU on a GPU.

CPU part (always): tokens/s of the project's training loop (trainers/engine.train_steps through
deepspeed.initialize) against a plain PyTorch loop doing the same per-step work (lr from the
schedule, the batch from train_batch, stratified times, seeded corruption, the family's loss,
backward, clip to 1.0, torch AdamW) on a separate copy of the same model, interleaved round by
round in one process, median of the rounds. Prints `ratio <deepspeed / plain>`; the target is
>= 0.90. The default size is representative of the CPU demo (sweeps/demo.yaml): 2 layers x 64,
vocabulary 1024, 32 sequences of 64 tokens, MDLM.

GPU part (`--gpu`, or automatically when CUDA is available; in its own process, since DeepSpeed
picks its accelerator once per process): the 113M shape of the paper's ladder (12 layers x 768,
12 heads, vocabulary 32001), sequences of 2048, bf16 autocast, fused AdamW, and the fast paths of
trainers/kernels.py as chosen by --compile / --attention. Prints the tokens/s of both loops (the
plain one unless --no-plain), `mfu <value>` = 6 N' tokens/s / peak, with N' = 12 L d^2 + d K (the
paper's FLOPs convention, scaling/flops.py) and the card's dense bf16 peak (H100/H200 SXM: 989e12
FLOP/s), and `mfu_palm` with attention's 12 L d T FLOPs per token added. --profile-steps N prints
the kernel time per step by category and the top kernels. The micro-batch halves until a step fits;
the first round is warm-up (and compilation) and not timed; timings are synchronised. Findings:
benchmarks/GPU_NOTES.md.

    python benchmarks/train_throughput.py                 # CPU (and GPU when there is one)
    python benchmarks/train_throughput.py --part gpu --compile blocks --profile-steps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peaks (NVIDIA datasheets, without sparsity), matched on the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class _NullMetrics:
    def write(self, rows) -> None:
        pass


def synthetic_data(n_blocks: int, seq_len: int, vocab_size: int):
    """A PreparedData over random blocks: train_batch only reads train_blocks."""
    import numpy as np

    from trainers.data import PreparedData

    rng = np.random.default_rng(0)
    blocks = rng.integers(2, vocab_size, size=(n_blocks, seq_len), dtype=np.int64).astype(np.int32)
    return PreparedData(tokenizer_dir=Path("."), train_blocks=blocks, val_blocks=blocks[:1],
                        val_bytes_per_token=1.0, mask_token_id=1, eos_token_id=0,
                        vocab_size=vocab_size, unigram_entropy_nats=0.0, digest="synthetic",
                        val_block_bytes=np.ones(1, dtype=np.int64))


def plain_steps(model, optimizer, family, data, cfg, first: int, last: int, device: str,
                precision: str, micro: int | None = None) -> float:
    """The same per-step work as trainers.engine.train_steps, without DeepSpeed (micro-batches of
    `micro` sequences accumulated to the global batch); returns the loss of the last micro-batch
    (read once: a sync, like the engine's end-of-round log row)."""
    import torch

    from trainers.data import train_batch
    from trainers.engine import CORRUPT_STREAM, TIME_STREAM, autocast_context, derive_seed
    from trainers.kernels import attention_context, begin_micro_batch
    from trainers.noise import sample_stratified_times

    batch = cfg.global_batch_seqs
    micro = micro or batch
    params = [p for p in model.parameters()]

    def to_device(host: torch.Tensor) -> torch.Tensor:  # as the engine's loop: a copy from pageable
        # memory (or .to() without non_blocking) makes the host wait for the GPU's queue
        return host if device == "cpu" else host.pin_memory().to(device, non_blocking=True)

    for step in range(first, last):
        lr = cfg.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for start in range(0, batch, micro):
            tokens = to_device(train_batch(data, step, batch, cfg.seed, start=start, count=micro))
            time_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, TIME_STREAM))
            t = to_device(sample_stratified_times(batch, start, micro, time_gen))
            gen = torch.Generator(torch.device(device))
            gen.manual_seed(derive_seed(cfg.seed, step, CORRUPT_STREAM, start))
            begin_micro_batch()
            with autocast_context(precision, device), attention_context(device):
                loss = family.training_loss(model, tokens, t, gen)
            (loss * (micro / batch)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach().item()


def build_pair(args, device: str, precision: str, micro_batch: int, global_batch: int | None = None):
    """(family, model for DeepSpeed, plain copy, plain optimizer, data, LoopConfig factory)."""
    import torch

    from scaling.flops import compute_forward_flops_per_token
    from scaling.schema import Recipe
    from trainers.backbone import build_model
    from trainers.engine import LoopConfig, build_optimizer
    from trainers.families import build_family
    from trainers.families.registry import get_entry

    torch.manual_seed(0)
    family = build_family(args.family, {}, vocab_size=args.vocab, mask_token_id=1)
    model = build_model(args.n_layers, args.d_model, args.n_heads, args.vocab,
                        attention=get_entry(args.family).attention, mask_token_id=1)
    plain = copy.deepcopy(model).to(device)
    global_batch = global_batch or micro_batch
    recipe = Recipe(global_batch_seqs=global_batch, seq_len=args.seq, precision=precision,
                    lr_peak=1e-3, lr_min=1e-4)
    plain_opt = build_optimizer(plain, recipe, device)
    data = synthetic_data(max(4 * global_batch, 64), args.seq, args.vocab)
    fwd = compute_forward_flops_per_token(args.n_layers, args.d_model, args.vocab, args.seq)

    def loop_config(total_steps: int) -> LoopConfig:
        return LoopConfig(total_steps=total_steps, warmup_steps=0, lr_peak=1e-3, lr_min=1e-4, seed=1,
                          seq_len=args.seq, global_batch_seqs=global_batch, log_every_steps=10**9,
                          checkpoint_every_steps=0, flops_per_step=3 * fwd * args.seq * global_batch)

    return family, model, plain, plain_opt, recipe, data, loop_config


def fit_micro_batch(args, device: str, precision: str) -> int:
    """The largest micro-batch <= args.micro_batch (halving) whose training step fits in memory."""
    import torch

    micro = args.micro_batch
    while micro >= 1:
        try:
            family, _, plain, opt, _, data, loop_config = build_pair(args, device, precision, micro)
            plain_steps(plain, opt, family, data, loop_config(2), 0, 2, device, precision)
            del plain, opt
            torch.cuda.empty_cache()
            return micro
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"micro-batch {micro} does not fit; halving", flush=True)
            micro //= 2
    raise SystemExit("not even one sequence fits on this GPU")


def measure(args, device: str, precision: str, micro_batch: int,
            global_batch: int | None = None) -> dict[str, float]:
    """Interleaved rounds of the DeepSpeed loop and the plain loop; median tokens/s of each. A step
    is one optimizer step over global_batch sequences (default: one micro-batch)."""
    import torch

    from trainers.dist import import_deepspeed, prepare_process
    from trainers.kernels import compile_blocks, compile_trunk, configure
    from trainers.engine import (LoopState, build_deepspeed_config, initialize_engine, plan_batches,
                                 train_steps)
    from scaling.schema import Resources

    proc = prepare_process(args.threads, use_gpu=device != "cpu")
    # trunk: the product's `compile: trunk`; the other modes compile the loss heads as blocks does
    scope = next((name for name in ("trunk", "whole") if args.compile.startswith(name)),
                 args.compile != "off")
    configure(scope, device, attention=args.attention,
              fused_head={"on": True, "off": False}.get(args.fused_head, "auto"),
              cuda_graphs=args.cuda_graphs)
    if args.fused_chunk_mib:  # the fused head's chunk budget on this device (trainers/fused_head.py)
        from trainers import fused_head

        fused_head.CHUNK_BYTES[device.split(":")[0]] = args.fused_chunk_mib * 2**20
    deepspeed = import_deepspeed(proc.world_size, proc.device)
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    global_batch = global_batch or micro_batch
    family, model, plain, plain_opt, recipe, data, loop_config = build_pair(args, device, precision,
                                                                          micro_batch, global_batch)
    plan = plan_batches(global_batch, micro_batch, 1)
    config = build_deepspeed_config(recipe, Resources(deepspeed_overrides=args.deepspeed_overrides),
                                    plan, precision)
    engine, optimizer = initialize_engine(deepspeed, model, recipe, config, device)
    if args.deepspeed_clip and "clip_fp32_gradients" in vars(engine):
        del engine.clip_fp32_gradients  # back to DeepSpeed's own (trainers/engine.clip_gradients)
    if args.compile in ("blocks", "blocks-autotune"):  # blocks: the product's path (trainers/kernels.py)
        # blocks-autotune: inductor benchmarks matmul templates and can fuse the GELU and bias
        # epilogues into them (compiles for minutes; CUDA graphs off: DeepSpeed's hooks)
        mode = "max-autotune-no-cudagraphs" if args.compile == "blocks-autotune" else None
        compile_blocks(engine.module, mode)
        compile_blocks(plain, mode)
    elif args.compile.startswith("whole"):  # the whole backbone as one graph (loss heads stay compiled)
        # whole-autotune: max-autotune's matmul templates with fused epilogues (fifth lease: the
        # whole model at micro-batches of 32 is the best figure, 31.9%; this is its next step)
        kwargs = {"mode": "max-autotune-no-cudagraphs"} if args.compile == "whole-autotune" else {}
        engine.compile(compile_kwargs=kwargs)
        plain = torch.compile(plain, **kwargs)
    elif args.compile.startswith("trunk"):  # the backbone up to the head as one graph
        # trunk-autotune: inductor's max-autotune (matmul templates with fused epilogues)
        mode = None if args.compile == "trunk" else (
            "max-autotune" if args.cuda_graphs else "max-autotune-no-cudagraphs")
        compile_trunk(engine.module, cuda_graphs=args.cuda_graphs, mode=mode)
        compile_trunk(plain, cuda_graphs=args.cuda_graphs, mode=mode)

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def deepspeed_seconds(first: int, last: int) -> float:
        sync()
        t0 = time.perf_counter()
        train_steps(engine, optimizer, family, data, loop_config(last), plan, rank=0, device=device,
                    precision=precision, state=LoopState(step=first), metrics=_NullMetrics())
        sync()
        return time.perf_counter() - t0

    tokens_per_round = args.steps * global_batch * args.seq
    ds_rates, plain_rates, timer_rates, step, peak_bytes = [], [], [], 0, 0
    for round_index in range(args.rounds + 1):  # round 0 warms up (allocator, autotuning, compile)
        first, last = step, step + (args.warmup_steps if round_index == 0 else args.steps)
        if device != "cpu":  # the DeepSpeed loop's own peak, not fit_micro_batch's eager probe
            torch.cuda.reset_peak_memory_stats()
        seconds = {}
        # --timer-ab: the same steps again with DeepSpeed's throughput timer on, first in every
        # other round (A/B interleaved in one process, on one compiled model)
        order = ((True, False) if round_index % 2 else (False, True)) if args.timer_ab else (None,)
        for timer_on in order:  # None: the engine as configured
            if timer_on is not None:
                set_throughput_timer(engine, timer_on)
            seconds[timer_on] = deepspeed_seconds(first, last)
        if args.timer_ab:
            set_throughput_timer(engine, False)
        if device != "cpu" and round_index > 0:
            peak_bytes = max(peak_bytes, torch.cuda.max_memory_allocated())
        sync()
        t1 = time.perf_counter()
        if not args.no_plain:
            plain_steps(plain, plain_opt, family, data, loop_config(last), first, last, device,
                        precision, micro_batch)
        sync()
        t2 = time.perf_counter()
        step = last
        if round_index > 0:
            ds_rates.append(tokens_per_round / seconds[False if args.timer_ab else None])
            plain_rates.append(tokens_per_round / (t2 - t1))
            if args.timer_ab:
                timer_rates.append(tokens_per_round / seconds[True])
    if args.cuda_graphs:  # graphs inductor declined to record (each logs "skipping cudagraphs due to")
        from torch._dynamo.utils import counters

        print(f"cudagraph_skips {counters['inductor']['cudagraph_skips']}", flush=True)
    if args.sync_report and device != "cpu":
        sync_report(engine, optimizer, family, data, loop_config, plan, device, precision, step)
        step += 1
    if args.profile_steps:
        profile_steps(args, engine, optimizer, family, data, loop_config, plan, device, precision, step)
    ds, pl = statistics.median(ds_rates), statistics.median(plain_rates)
    timer = statistics.median(timer_rates) if timer_rates else None
    return {"deepspeed": ds, "plain": pl, "ratio": ds / pl, "peak_bytes": peak_bytes,
            "deepspeed_timer_on": timer}


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
                        metrics=_NullMetrics())
    finally:
        torch.cuda.set_sync_debug_mode(0)
        accelerator.synchronize = synchronize
    implicit = [w for w in caught if "synchroniz" in str(w.message)]
    places = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in implicit)
    print(f"syncs_per_step explicit {len(explicit)} implicit {len(implicit)} "
          f"({plan.accumulation_steps} micro-batches)", flush=True)
    for place, count in places.most_common(6):
        print(f"  {count}x {place}")


def kernel_category(name: str) -> str:
    lower = name.lower()
    for key, words in (("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
                       ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
                       ("optimizer", ("adam", "multi_tensor", "foreach")),
                       ("loss", ("log_softmax", "softmax", "nll", "cross_entropy"))):
        if any(w in lower for w in words):
            return key
    return "other (elementwise, norms, copies)"


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
                    precision=precision, state=LoopState(step=first), metrics=_NullMetrics())
        host = time.perf_counter() - wall  # until the host has queued every kernel
        torch.cuda.synchronize()
    wall = time.perf_counter() - wall
    rows = [(e.key, e.device_time_total, e.count) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]
    total = sum(t for _, t, _ in rows)
    n_micro = args.profile_steps * plan.accumulation_steps  # forward/backward passes profiled
    per_step = lambda us: us / 1e3 / n_micro  # noqa: E731 - ms per micro-batch
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
    for key, t, count in sorted(rows, key=lambda r: -r[1])[:args.profile_top]:
        print(f"    {per_step(t):7.2f} ms {count / n_micro:6.1f}x  {key[:100]}")


def run_cpu(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    print(f"cpu: {args.family} L{args.n_layers} d{args.d_model} vocab {args.vocab}, {args.batch} x "
          f"{args.seq} tokens per step, fp32, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.steps} steps", flush=True)
    args.micro_batch = args.batch
    rates = measure(args, "cpu", "fp32", args.batch)
    print(f"deepspeed_tokens_per_s {rates['deepspeed']:.0f}")
    print(f"plain_tokens_per_s {rates['plain']:.0f}")
    print(f"ratio {rates['ratio']:.3f}")


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def run_gpu(args) -> None:
    import torch

    from scaling.flops import compute_forward_flops_per_token

    args.n_layers, args.d_model, args.n_heads, args.vocab, args.seq = 12, 768, 12, 32001, 2048
    name = torch.cuda.get_device_name()
    # The probe trains the eager model, which holds more activations than a compiled one: at
    # micro-batches of 64 it halved to 32 where the compiled whole model took 31.7 GiB (fifth lease).
    micro = args.micro_batch if args.skip_probe else fit_micro_batch(args, "cuda:0", "bf16")
    global_batch = args.global_batch or micro
    if global_batch % micro:
        raise SystemExit(f"--global-batch {global_batch} is not a multiple of the micro-batch {micro}")
    bf16_weights = args.deepspeed_overrides.get("bf16", {}).get("enabled")
    precision = "bf16 weights" if bf16_weights else "bf16 autocast"
    print(f"gpu: {name}; {args.family} 113M shape (12 x 768, vocab 32001), micro-batch {micro} x "
          f"2048, global batch {global_batch} ({global_batch // micro} micro-batches per optimizer "
          f"step), {precision}, compile {args.compile}{' + CUDA graphs' if args.cuda_graphs else ''}, "
          f"attention {args.attention}, clip {'deepspeed' if args.deepspeed_clip else 'foreach'}",
          flush=True)
    rates = measure(args, "cuda:0", "bf16", micro, global_batch)
    # Training FLOPs per token: 6 N' (paper convention), and PaLM's MFU (Chowdhery et al. 2022,
    # appendix B), which adds attention's score and value matmuls over the full T x T, causal or
    # not: 6 N' + 12 L d T, the `full` convention of scaling/flops.py.
    paper, palm = (3 * compute_forward_flops_per_token(12, 768, 32001, 2048, convention)
                   for convention in ("paper", "full"))
    peak = peak_flops(name, args.peak_flops)
    print(f"gpu_deepspeed_tokens_per_s {rates['deepspeed']:.0f}")
    if rates["deepspeed_timer_on"]:
        print(f"gpu_deepspeed_timer_on_tokens_per_s {rates['deepspeed_timer_on']:.0f}")
        print(f"gpu_timer_off_over_on {rates['deepspeed'] / rates['deepspeed_timer_on']:.3f}")
    if not args.no_plain:
        print(f"gpu_plain_tokens_per_s {rates['plain']:.0f}")
        print(f"gpu_ratio {rates['ratio']:.3f}")
    # Allocated during the timed DeepSpeed steps, both models' weights and optimizer states included.
    # Not the process's peak: that is fit_micro_batch's eager probe (GPU_NOTES' older figures).
    print(f"peak_memory_gib {rates['peak_bytes'] / 2**30:.1f}")
    if peak is None:
        print(f"mfu nan  (unknown peak for {name!r}; pass --peak-flops)")
    else:
        print(f"mfu {paper * rates['deepspeed'] / peak:.3f}")
        print(f"mfu_palm {palm * rates['deepspeed'] / peak:.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "cpu", "gpu"), default="all",
                   help="all: CPU here, then the GPU part in a subprocess when CUDA is available")
    p.add_argument("--gpu", action="store_true", help="run the GPU part (error without CUDA)")
    p.add_argument("--family", default="mdlm")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the demo gives a run 1)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=30, help="steps per timed round")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps of the untimed first round")
    p.add_argument("--micro-batch", type=int, default=16, help="GPU: largest micro-batch to try")
    p.add_argument("--skip-probe", action="store_true",
                   help="GPU: train at --micro-batch without first probing (eagerly) that it fits")
    p.add_argument("--global-batch", type=int, default=None,
                   help="GPU: sequences per optimizer step, accumulated over micro-batches (the "
                        "paper's recipe: 256); default one micro-batch")
    p.add_argument("--deepspeed-clip", action="store_true",
                   help="GPU: DeepSpeed's own per-parameter gradient clipping instead of "
                        "trainers/engine.clip_gradients (to measure the difference)")
    p.add_argument("--compile", choices=("off", "blocks", "blocks-autotune", "trunk", "trunk-autotune",
                                         "whole", "whole-autotune"),
                   default="off",
                   help="blocks: the product's compiled blocks and loss heads (trainers/kernels.py, "
                        "resources.compile); blocks-autotune: the same in torch.compile's "
                        "max-autotune-no-cudagraphs mode; trunk: the backbone up to the head as "
                        "one graph (resources.compile: trunk); trunk-autotune: the same in "
                        "max-autotune mode (minutes of tuning); whole: the whole model as one graph; "
                        "whole-autotune: the same in max-autotune-no-cudagraphs mode")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile trunk[-autotune] on a GPU: replay the trunk as CUDA graphs "
                        "(torch.compile's reduce-overhead mode)")
    p.add_argument("--attention", choices=("auto", "default", "cudnn", "flash", "efficient"),
                   default="auto", help="scaled_dot_product_attention backend (trainers/kernels.py)")
    p.add_argument("--fused-head", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="the head and loss fused, chunk by chunk, in both loops (trainers/fused_head.py, "
                        "resources.fused_head); auto, a run's default, = on a GPU only; bare = on")
    p.add_argument("--fused-chunk-mib", type=int, default=None,
                   help="with --fused-head: float32 logits per chunk, MiB (default: "
                        "fused_head.CHUNK_BYTES, 1024 on a GPU)")
    p.add_argument("--no-plain", action="store_true", help="time the DeepSpeed loop only")
    p.add_argument("--deepspeed-overrides", type=json.loads, default={},
                   help="JSON merged into the DeepSpeed config, as resources.deepspeed_overrides "
                        "(e.g. bf16 weights: '{\"bf16\": {\"enabled\": true}, "
                        "\"torch_autocast\": {\"enabled\": false}}')")
    p.add_argument("--timer-ab", action="store_true",
                   help="every timed round also runs the same steps with DeepSpeed's throughput timer "
                        "on (interleaved, one process): prints both rates and their ratio")
    p.add_argument("--sync-report", action="store_true",
                   help="GPU: count the device synchronisations of one optimizer step, by place")
    p.add_argument("--profile-steps", type=int, default=0, help="GPU: profile this many steps")
    p.add_argument("--profile-top", type=int, default=12, help="kernels listed by the profile")
    p.add_argument("--peak-flops", type=float, default=None, help="GPU: peak bf16 FLOP/s override")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part == "gpu":
        run_gpu(args)
        return 0
    import torch

    want_gpu = args.gpu or (args.part == "all" and torch.cuda.is_available())
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    run_cpu(args)
    if want_gpu:
        sys.stdout.flush()
        extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--gpu",)]
        return subprocess.call([sys.executable, __file__, *extra, "--part", "gpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
