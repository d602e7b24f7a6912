"""Sampling speed: what the KV cache buys AR and Eso-LM (REFERENCE §5).

Random-initialised backbones (speed does not depend on the weights, so no trained checkpoint is
needed), 4 layers x 128 wide, vocabulary 1024, a batch of 8, 256 generated tokens per sequence:

- AR: token by token with the KV cache against recomputing the whole prefix at every token;
- Eso-LM: diffusion with the cache over clean tokens against recomputing every clean token at each
  step (`--esolm-steps` steps, default 64).

Rounds interleave A and B (cache, no cache, cache, ...) after one untimed warm-up of each, and the
medians are reported, so a background load slows both alike. Timers are synchronised on a GPU.
Prints tokens/s of every mode, then `AR speedup <value>` (target >= 3) and `Eso-LM speedup <value>`.

    python benchmarks/sampling_speed.py                 # CPU, about 3 minutes on one core
    python benchmarks/sampling_speed.py --device cuda --batch 64 --seq-len 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MASK_TOKEN_ID = 1  # as in the project's trained BPE: 0 <eos>, 1 [MASK]
BOS_TOKEN_ID = 0


def build(family_name: str, args):
    import torch

    from trainers.backbone import build_model
    from trainers.families import build_family
    from trainers.families.registry import get_entry

    torch.manual_seed(0)
    model = build_model(args.layers, args.width, args.heads, args.vocab,
                        attention=get_entry(family_name).attention, mask_token_id=MASK_TOKEN_ID)
    for module in model.modules():  # the zero-initialised adaLN and head would predict uniformly
        if getattr(module, "zero_init", False):
            module.weight.data.normal_(0.0, 0.02)
    family = build_family(family_name, {}, vocab_size=args.vocab, mask_token_id=MASK_TOKEN_ID)
    return family, model.to(args.device).eval()


def time_sampling(family, model, args, seq_len: int, n_steps: int, use_cache: bool, seed: int) -> float:
    """Seconds of one sampling call (synchronised)."""
    import torch

    generator = torch.Generator(device=args.device).manual_seed(seed)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    family.sample(model, args.batch, seq_len, n_steps, generator, use_cache=use_cache,
                  bos_token_id=BOS_TOKEN_ID)
    sync()
    return time.perf_counter() - start


def compare(name: str, family, model, args, seq_len: int, n_steps: int, n_generated: int) -> float:
    """Median tokens/s with and without the cache over interleaved rounds; returns the speedup."""
    for use_cache in (True, False):  # warm-up, not timed
        time_sampling(family, model, args, seq_len, n_steps, use_cache, seed=0)
    seconds = {True: [], False: []}
    for round_ in range(args.rounds):
        for use_cache in (True, False):
            seconds[use_cache].append(time_sampling(family, model, args, seq_len, n_steps, use_cache,
                                                    seed=round_ + 1))
    tokens = args.batch * n_generated
    rate = {mode: tokens / statistics.median(values) for mode, values in seconds.items()}
    print(f"{name} cache    tokens/s {rate[True]:,.0f}")
    print(f"{name} no-cache tokens/s {rate[False]:,.0f}")
    return rate[True] / rate[False]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256, help="generated tokens per sequence")
    parser.add_argument("--esolm-steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads "
                             "only contend; 0 keeps torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.layers} layers x {args.width}, vocab {args.vocab}, batch {args.batch}, "
          f"{args.seq_len} generated tokens, {args.rounds} interleaved rounds (medians)")
    # AR: position 0 is the start token, so seq_len + 1 positions hold seq_len generated tokens
    family, model = build("ar", args)
    ar = compare("AR", family, model, args, args.seq_len + 1, args.seq_len, args.seq_len)
    family, model = build("esolm", args)
    eso = compare(f"Eso-LM ({args.esolm_steps} steps)", family, model, args, args.seq_len + 1,
                  args.esolm_steps, args.seq_len)
    print(f"AR speedup {ar:.2f}")
    print(f"Eso-LM speedup {eso:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
