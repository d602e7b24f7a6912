"""The two loops train_throughput.py times, and their shared set-up: a synthetic corpus, the plain
PyTorch loop that does the engine loop's per-step work without DeepSpeed, the model pair (one for
DeepSpeed, a deep copy for the plain loop), and the GPU's micro-batch probe."""

from __future__ import annotations

import copy
from pathlib import Path


class NullMetrics:
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
