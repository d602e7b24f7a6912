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
the kernel time per step by category, the top kernels and the top elementwise ones
(benchmarks/gpu_diagnostics.py; --profile-csv writes every kernel). The micro-batch halves until a
step fits; the first round is warm-up (and compilation) and not timed; timings are synchronised.
Findings: benchmarks/GPU_NOTES.md.

    python benchmarks/train_throughput.py                 # CPU (and GPU when there is one)
    python benchmarks/train_throughput.py --part gpu --compile blocks --profile-steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_diagnostics import profile_steps, set_throughput_timer, sync_report  # noqa: E402
from throughput_loops import NullMetrics, build_pair, fit_micro_batch, plain_steps  # noqa: E402

# Dense bf16 tensor-core peaks (NVIDIA datasheets, without sparsity), matched on the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class Bench:
    """Both loops, ready to time: the DeepSpeed engine and the plain copy of the same model, compiled
    alike, with the family, the synthetic corpus and the batch plan they share."""

    engine: Any
    optimizer: Any
    plain: Any
    plain_opt: Any
    family: Any
    data: Any
    loop_config: Callable[[int], Any]
    plan: Any
    device: str
    precision: str

    def sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()

    def deepspeed_seconds(self, first: int, last: int) -> float:
        from trainers.engine import LoopState, train_steps

        self.sync()
        t0 = time.perf_counter()
        train_steps(self.engine, self.optimizer, self.family, self.data, self.loop_config(last),
                    self.plan, rank=0, device=self.device, precision=self.precision,
                    state=LoopState(step=first), metrics=NullMetrics())
        self.sync()
        return time.perf_counter() - t0

    def plain_seconds(self, first: int, last: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        plain_steps(self.plain, self.plain_opt, self.family, self.data, self.loop_config(last), first,
                    last, self.device, self.precision, self.plan.micro_batch_seqs)
        self.sync()
        return time.perf_counter() - t0


def configure_fast_paths(args, device: str) -> None:
    """trainers/kernels.py's switches as the flags ask, before either model is built."""
    from trainers.kernels import configure

    # trunk: the product's `compile: trunk`; the other modes compile the loss heads as blocks does
    scope = next((name for name in ("trunk", "whole") if args.compile.startswith(name)),
                 args.compile != "off")
    configure(scope, device, attention=args.attention,
              fused_head={"on": True, "off": False}.get(args.fused_head, "auto"),
              cuda_graphs=args.cuda_graphs)
    if args.fused_chunk_mib:  # the fused head's chunk budget on this device (trainers/fused_head.py)
        from trainers import fused_head

        fused_head.CHUNK_BYTES[device.split(":")[0]] = args.fused_chunk_mib * 2**20


def compile_models(args, engine, plain):
    """Both models compiled as --compile asks; returns the plain one (torch.compile wraps it)."""
    import torch

    from trainers.kernels import compile_blocks, compile_trunk

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
    return plain


def set_up(args, device: str, precision: str, micro_batch: int, global_batch: int) -> Bench:
    """The engine (deepspeed.initialize, the product's config plus --deepspeed-overrides) and the
    plain loop's copy, both compiled as --compile asks."""
    import logging

    from scaling.schema import Resources
    from trainers.dist import import_deepspeed, prepare_process
    from trainers.engine import build_deepspeed_config, initialize_engine, plan_batches

    proc = prepare_process(args.threads, use_gpu=device != "cpu")
    configure_fast_paths(args, device)
    deepspeed = import_deepspeed(proc.world_size, proc.device)
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    family, model, plain, plain_opt, recipe, data, loop_config = build_pair(args, device, precision,
                                                                          micro_batch, global_batch)
    plan = plan_batches(global_batch, micro_batch, 1)
    config = build_deepspeed_config(recipe, Resources(deepspeed_overrides=args.deepspeed_overrides),
                                    plan, precision)
    engine, optimizer = initialize_engine(deepspeed, model, recipe, config, device)
    if args.deepspeed_clip and "clip_fp32_gradients" in vars(engine):
        del engine.clip_fp32_gradients  # back to DeepSpeed's own (trainers/engine.clip_gradients)
    plain = compile_models(args, engine, plain)
    return Bench(engine, optimizer, plain, plain_opt, family, data, loop_config, plan, device,
                 precision)


def timed_rounds(args, bench: Bench) -> tuple[dict[str, float], int]:
    """Rounds of the DeepSpeed loop then the plain loop on the same steps (round 0 warms up: the
    allocator, autotuning, compilation); medians of tokens/s, peak memory, and the next step.
    --timer-ab runs each round's steps once more with DeepSpeed's throughput timer on, first in
    every other round (A/B interleaved in one process, on one compiled model)."""
    import torch

    tokens_per_round = args.steps * bench.plan.global_batch_seqs * args.seq
    rates: dict[str, list[float]] = {"deepspeed": [], "plain": [], "deepspeed_timer_on": []}
    step, peak_bytes = 0, 0
    for round_index in range(args.rounds + 1):
        first, last = step, step + (args.warmup_steps if round_index == 0 else args.steps)
        if bench.device != "cpu":  # the DeepSpeed loop's own peak, not fit_micro_batch's eager probe
            torch.cuda.reset_peak_memory_stats()
        seconds = {}
        order = ((True, False) if round_index % 2 else (False, True)) if args.timer_ab else (None,)
        for timer_on in order:  # None: the engine as configured
            if timer_on is not None:
                set_throughput_timer(bench.engine, timer_on)
            seconds[timer_on] = bench.deepspeed_seconds(first, last)
        if args.timer_ab:
            set_throughput_timer(bench.engine, False)
        if bench.device != "cpu" and round_index > 0:
            peak_bytes = max(peak_bytes, torch.cuda.max_memory_allocated())
        plain_s = None if args.no_plain else bench.plain_seconds(first, last)
        step = last
        if round_index > 0:
            rates["deepspeed"].append(tokens_per_round / seconds[False if args.timer_ab else None])
            if plain_s is not None:
                rates["plain"].append(tokens_per_round / plain_s)
            if args.timer_ab:
                rates["deepspeed_timer_on"].append(tokens_per_round / seconds[True])
    medians = {key: statistics.median(values) if values else None for key, values in rates.items()}
    medians["ratio"] = medians["deepspeed"] / medians["plain"] if medians["plain"] else None
    medians["peak_bytes"] = peak_bytes
    return medians, step


def measure(args, device: str, precision: str, micro_batch: int,
            global_batch: int | None = None) -> dict[str, float]:
    """Interleaved rounds of the DeepSpeed loop and the plain loop; median tokens/s of each, then
    the diagnostics the flags ask for. A step is one optimizer step over global_batch sequences
    (default: one micro-batch)."""
    bench = set_up(args, device, precision, micro_batch, global_batch or micro_batch)
    rates, step = timed_rounds(args, bench)
    if args.cuda_graphs:  # graphs inductor declined to record (each logs "skipping cudagraphs due to")
        from torch._dynamo.utils import counters

        print(f"cudagraph_skips {counters['inductor']['cudagraph_skips']}", flush=True)
    diagnostics = (bench.engine, bench.optimizer, bench.family, bench.data, bench.loop_config,
                   bench.plan, device, precision)
    if args.sync_report and device != "cpu":
        sync_report(*diagnostics, step)
        step += 1
    if args.profile_steps:
        profile_steps(args, *diagnostics, step)
    return rates


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
    p.add_argument("--profile-csv", default=None,
                   help="GPU, with --profile-steps: write every profiled kernel to this CSV file")
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
