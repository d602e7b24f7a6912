"""CPU training step at the demo's shapes: glibc's default allocator against the product's
(trainers/dist.keep_freed_memory), and torch's fused AdamW for reference (faster, but not the
product's on CPU: trainers/engine.build_optimizer says why).

Each measurement is a fresh child process (an allocator setting cannot be undone in a process),
so the variants are interleaved round by round and the figures are medians. A child builds the
backbone and the family exactly as a run does (2 layers, vocabulary 512, 16 x 64 tokens per step,
one thread), warms up, then times forward + loss + backward + clip + AdamW step. No DeepSpeed: its
per-step cost is the same in every variant (benchmarks/train_throughput.py measures it).

    python benchmarks/cpu_step.py                       # every family at d8 and d32, 3 rounds
    python benchmarks/cpu_step.py --families duo --widths 8 --rounds 5

Prints one line per (family, width, variant) with the median ms per step and page faults per
step, then `ratio_<family>_d<width> <glibc+foreach / kept+foreach>` (above 1: the product's
allocator setting is faster) and `fused_head_ratio_<family>_d<width> <kept+foreach /
kept+fusedhead>` (above 1: resources.fused_head is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (keep freed memory, fused AdamW, fused head)
    "glibc+foreach": (False, False, False),  # before trainers/dist.keep_freed_memory
    "kept+foreach": (True, False, False),  # the product's CPU step
    "kept+fused": (True, True, False),
    "kept+fusedhead": (True, False, True),  # resources.fused_head: true (trainers/fused_head.py)
}
BEFORE, AFTER = "glibc+foreach", "kept+foreach"
VOCAB, SEQ_LEN, BATCH_SEQS = 512, 64, 16  # sweeps/demo.yaml


def child(family_name: str, d_model: int, variant: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    keep, fused, fused_head = VARIANTS[variant]
    if keep:
        from trainers.dist import keep_freed_memory

        assert keep_freed_memory(), "not glibc: nothing to compare"
    import resource
    import time

    import torch

    from trainers import kernels
    from trainers.backbone import build_model
    from trainers.engine import clip_gradients
    from trainers.families import build_family
    from trainers.families.registry import get_entry
    from trainers.noise import sample_stratified_times

    kernels.configure(False, "cpu", fused_head=fused_head)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    options = {"alpha_0": 1.0} if family_name == "esolm" else {}
    model = build_model(2, d_model, 1 if d_model < 16 else 2, VOCAB,
                        attention=get_entry(family_name).attention, mask_token_id=1)
    family = build_family(family_name, options, vocab_size=VOCAB, mask_token_id=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1,
                                  **({"fused": True} if fused else {"foreach": True}))
    tokens = torch.randint(2, VOCAB, (BATCH_SEQS, SEQ_LEN))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        t = sample_stratified_times(BATCH_SEQS, 0, BATCH_SEQS, generator)
        family.training_loss(model, tokens, t, generator).backward()
        clip_gradients(list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(20):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms_per_step": 1000 * elapsed / steps, "faults_per_step": faults / steps}


def measure(family_name: str, d_model: int, variant: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", family_name, str(d_model), variant,
                          str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="ar,mdlm,duo,esolm")
    parser.add_argument("--widths", default="8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        family_name, d_model, variant, steps = args.child
        print(json.dumps(child(family_name, int(d_model), variant, int(steps))))
        return
    for family_name in args.families.split(","):
        for d_model in map(int, args.widths.split(",")):
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    runs[variant].append(measure(family_name, d_model, variant, args.steps))
            medians = {}
            for variant, results in runs.items():
                medians[variant] = statistics.median(r["ms_per_step"] for r in results)
                faults = statistics.median(r["faults_per_step"] for r in results)
                print(f"{family_name} d{d_model} {variant:14s} {medians[variant]:7.2f} ms/step  "
                      f"{faults:6.0f} page faults/step", flush=True)
            print(f"ratio_{family_name}_d{d_model} {medians[BEFORE] / medians[AFTER]:.3f}", flush=True)
            print(f"fused_head_ratio_{family_name}_d{d_model} "
                  f"{medians[AFTER] / medians['kept+fusedhead']:.3f}", flush=True)


if __name__ == "__main__":
    main()
