"""The DeepSpeed engine of one run: its config, generated from the recipe, and the training loop.

Config (`build_deepspeed_config`): ZeRO stage from Resources, gradient clipping, gradient
accumulation so that micro_batch x accumulation x workers == global_batch_seqs exactly, and
precision: bf16 on GPU / fp32 on CPU for `precision: auto`. bf16 is torch autocast (DeepSpeed's
`torch_autocast` section, fp32 master weights): the family's loss (log-softmax, the Duo closed form)
then also runs under autocast, which keeps reductions in fp32, as the study's Lightning
`bf16-mixed` did. Everything DeepSpeed would do per step beyond the maths (timers, the throughput
timer's device syncs, flops profiler, monitors, printing) is switched off.
Resources.deepspeed_overrides is deep-merged over the result.

Optimizer: torch.optim.AdamW handed to deepspeed.initialize (fused kernel on CUDA, foreach on
CPU); DeepSpeed's own Adam ops would need a C++/CUDA compile per machine. Weight decay applies to
every parameter, as in the MDLM/Duo code the study builds on.

Loop (`train_steps`): the learning rate is set each step from the pure schedule
(trainers/schedule.py). Every random stream of a step is seeded from (seed, step): the batch
(trainers/data.train_batch), the diffusion times (shared by all micro-batches and ranks, so the
stratification spans the global batch) and the corruption (per micro-batch). A run resumed at step s
therefore replays steps s, s+1, ... exactly. The corruption seed includes the micro-batch's row
offset in the global batch, so a run is a function of its spec and of its micro-batch size:
2 workers x 4 sequences train exactly the model that 1 worker accumulating 2 x 4 trains
(tests/trainers/test_train_e2e.py), while 1 worker x 8 draws other (equally distributed) masks.
The loss is read back (a device sync) only every log_every_steps and at checkpoints; a non-finite
loss stops the run with DivergedError.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from scaling.errors import UserError
from trainers.schedule import compute_lr

NEVER_PRINT = 2**31 - 1  # DeepSpeed's steps_per_print: its per-step log line is never due
_MASK64 = (1 << 64) - 1
TIME_STREAM, CORRUPT_STREAM = 1, 2


class DivergedError(UserError):
    """The training loss became NaN or infinite: the recipe (lr, warmup) is at fault, not the code."""

    exit_code = 3


# ---------------------------------------------------------------- config (pure)


@dataclass(frozen=True)
class BatchPlan:
    global_batch_seqs: int
    micro_batch_seqs: int  # per worker per forward
    accumulation_steps: int
    world_size: int

    @property
    def per_worker_seqs(self) -> int:
        return self.micro_batch_seqs * self.accumulation_steps


def plan_batches(global_batch_seqs: int, micro_batch_seqs: int | None, world_size: int) -> BatchPlan:
    """Split the global batch over workers and accumulation steps, exactly or not at all."""
    if global_batch_seqs % world_size:
        raise UserError(f"recipe.global_batch_seqs {global_batch_seqs} is not divisible by "
                        f"{world_size} workers; choose a multiple of the worker count")
    per_worker = global_batch_seqs // world_size
    micro = per_worker if micro_batch_seqs is None else micro_batch_seqs
    if micro <= 0 or per_worker % micro:
        raise UserError(f"recipe.micro_batch_seqs {micro} must divide global_batch_seqs / workers "
                        f"= {per_worker}")
    return BatchPlan(global_batch_seqs, micro, per_worker // micro, world_size)


def resolve_precision(precision: str, device: str) -> str:
    """`auto` is bf16 on a GPU and fp32 on a CPU (REFERENCE §3 trains in bf16 on GPUs)."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, recursing into nested dicts; neither input is modified."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_deepspeed_config(recipe, resources, plan: BatchPlan, precision: str) -> dict[str, Any]:
    """The DeepSpeed config of a run (module docstring), user overrides merged last."""
    config: dict[str, Any] = {
        "train_batch_size": plan.global_batch_seqs,
        "train_micro_batch_size_per_gpu": plan.micro_batch_seqs,
        "gradient_accumulation_steps": plan.accumulation_steps,
        "gradient_clipping": recipe.grad_clip,
        "zero_optimization": {"stage": resources.zero_stage},
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": precision == "bf16", "dtype": "bfloat16"},
        # Per-step costs DeepSpeed can add; none is wanted in the inner loop.
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
        # On by default, and it synchronises the device twice per micro-batch (its start in the
        # engine's forward, its stop in engine.step): the GPU drains, then idles while the host
        # queues the next micro-batch. The run's tokens/s come from its own wall clock.
        "timers": {"throughput": {"enabled": False}},
        "flops_profiler": {"enabled": False},
        "tensorboard": {"enabled": False},
        "wandb": {"enabled": False},
        "csv_monitor": {"enabled": False},
        "comms_logger": {"enabled": False},
        "dump_state": False,
    }
    return deep_merge(config, dict(resources.deepspeed_overrides))


def build_optimizer(model: torch.nn.Module, recipe, device: str) -> torch.optim.AdamW:
    """AdamW with the recipe's betas, eps and weight decay; lr is set per step by the loop."""
    # foreach on CPU, not the fused kernel, though fused is faster there (demo d8: 0.20 against
    # 0.65 ms per step): its other rounding flips the demo's calibrated results (Duo's 2e11
    # iso-FLOP curve turns monotone, README "The demo"), which are as much noise as shape.
    kwargs = {"fused": True} if device.startswith("cuda") else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr_peak, betas=tuple(recipe.betas),
                             eps=recipe.adam_eps, weight_decay=recipe.weight_decay, **kwargs)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts): distinct streams per (seed, step, ...)."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def autocast_context(precision: str, device: str):
    """bf16 autocast around the loss (forward and the family's loss maths); a no-op for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


# ---------------------------------------------------------------- engine (side effects)


def initialize_engine(deepspeed, model: torch.nn.Module, recipe, config: dict[str, Any], device: str):
    """deepspeed.initialize with our AdamW; returns (engine, that optimizer: its groups carry the lr).

    Under ZeRO the engine wraps the optimizer but steps it, so its param groups stay the ones whose
    lr the loop sets. The model moves to its device before the optimizer is built: a fused AdamW
    requires CUDA parameters."""
    model.to(device)
    optimizer = build_optimizer(model, recipe, device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if _deepspeed_clips_per_parameter(engine):
        # DeepSpeed's clip (runtime/utils.clip_grad_norm_), the same maths at a cost: on a GPU it
        # builds two host tensors on the device, each a stream synchronisation that idles the GPU
        # until the host catches up (113M shape on an H100: 2.9% of the step); on a CPU it walks
        # the module tree for the parameters and all-reduces the norm over gloo even for one
        # worker (about 2% of a small demo run). The CPU results are the same to the last bit.
        max_norm, params = engine.gradient_clipping(), list(engine.module.parameters())
        engine.clip_fp32_gradients = lambda: clip_gradients(params, max_norm)
    if engine.dp_world_size == 1 and engine.zero_optimization_stage() == 0:
        # One worker, no ZeRO: the gradient all-reduce after backward averages over a world of
        # one, yet flattens and copies every gradient (~3 ms of a ~50 ms step of the smallest demo
        # model, benchmarks/train_throughput.py). DeepSpeed's own pipeline engine turns it off the
        # same way.
        engine.enable_backward_allreduce = False
    return engine, optimizer


def _deepspeed_clips_per_parameter(engine) -> bool:
    """Whether engine.step clips through engine.clip_fp32_gradients (ZeRO 0, fp32 master weights
    held by our own optimizer); ZeRO and DeepSpeed's bf16/fp16 optimizers clip their own buffers."""
    return (engine.gradient_clipping() > 0 and not engine.zero_optimization()
            and not engine.bfloat16_enabled() and not engine.fp16_enabled())


@torch.no_grad()
def clip_gradients(parameters, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most max_norm; returns the norm
    before clipping. DeepSpeed's clip_fp32_gradients without a device sync: foreach kernels, and
    the coefficient min(1, max_norm / (norm + 1e-6)) stays on the device. Under ZeRO 0 the
    gradients are already averaged over the workers when it runs, so the local norm is the global
    one (DeepSpeed all-reduces identical norms)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm([g.float() for g in grads])  # .float() of float32 is itself
    total = torch.stack(norms).square().sum().sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, coefficient.to(grads[0].dtype))
    return total


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopConfig:
    """The numbers the loop needs, read once from the RunSpec."""

    total_steps: int
    warmup_steps: int
    lr_peak: float
    lr_min: float
    seed: int
    seq_len: int
    global_batch_seqs: int
    log_every_steps: int
    checkpoint_every_steps: int  # 0: never
    flops_per_step: float

    @classmethod
    def from_spec(cls, spec, checkpoint_every_steps: int) -> "LoopConfig":
        recipe = spec.recipe
        tokens_per_step = recipe.global_batch_seqs * recipe.seq_len
        return cls(spec.steps, spec.warmup_steps, recipe.lr_peak, recipe.lr_min, recipe.seed,
                   recipe.seq_len, recipe.global_batch_seqs, recipe.log_every_steps,
                   checkpoint_every_steps, 3.0 * spec.fwd_flops_per_token * tokens_per_step)

    def lr_at(self, step: int) -> float:
        return compute_lr(step, lr_peak=self.lr_peak, lr_min=self.lr_min,
                          warmup_steps=self.warmup_steps, total_steps=self.total_steps)


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint (DeepSpeed client state)."""

    step: int = 0  # optimizer steps done
    train_wall_s: float = 0.0  # training-loop seconds over all sessions of this run
    window: list[float] = field(default_factory=list)  # per-step losses since the last logged row

    def to_client_state(self) -> dict[str, Any]:
        return {"step": self.step, "train_wall_s": self.train_wall_s, "window": list(self.window)}

    @classmethod
    def from_client_state(cls, state: dict[str, Any]) -> "LoopState":
        return cls(int(state["step"]), float(state["train_wall_s"]), list(state["window"]))


@dataclass(frozen=True)
class LoopOutcome:
    steps_done: int
    train_wall_s: float  # all sessions
    session_steps: int
    session_wall_s: float
    first_step_time: float  # time.time() when this session's first step began


def _check_finite(losses: list[float], first_step: int) -> None:
    for offset, value in enumerate(losses):
        if not math.isfinite(value):
            kind = "nan" if math.isnan(value) else "inf"
            raise DivergedError(f"loss became {kind} at step {first_step + offset}; "
                                "lower recipe.lr_peak or raise warmup")


def _mean_over_workers(losses: torch.Tensor, world_size: int) -> torch.Tensor:
    """Per-step losses averaged over the workers: each holds a slice of the global batch (for the
    diffusion families, a slice of the stratified times, so one worker's loss alone is biased).
    Called at the same (logged) steps on every worker. gloo has no AVG, hence SUM / world."""
    if world_size > 1:
        import torch.distributed as dist

        losses = losses.clone()
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)
        losses /= world_size
    return losses


class _StepRunner:
    """One optimizer step: every micro-batch of this worker through forward, backward and
    engine.step (which steps the optimizer at the accumulation boundary)."""

    def __init__(self, engine, family, data, cfg: LoopConfig, plan: BatchPlan, rank: int, device: str,
                 precision: str):
        from trainers.data import train_batch
        from trainers.kernels import attention_context, begin_micro_batch
        from trainers.noise import sample_stratified_times

        self.engine, self.family, self.data, self.cfg = engine, family, data, cfg
        self.device, self.precision = device, precision
        self.micro = plan.micro_batch_seqs
        # Global row offsets of this worker's micro-batches: seeds depend on them, not on the split.
        self.starts = [rank * plan.per_worker_seqs + i * self.micro for i in range(plan.accumulation_steps)]
        self.gen_device = torch.device(device)
        self.zeros_t = torch.zeros(self.micro, device=device)  # AR is fed t = 0 (REFERENCE §1)
        self._train_batch, self._times = train_batch, sample_stratified_times
        self._attention = lambda: attention_context(device)
        self._begin = begin_micro_batch

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor on the run's device. On a GPU through pinned memory: a copy from pageable
        memory (and any .to() without non_blocking) makes the host wait for the GPU's queue."""
        if self.gen_device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def __call__(self, step: int) -> torch.Tensor:
        """Run step `step`; its loss (mean over micro-batches), left on the device."""
        cfg, total = self.cfg, None
        for start in self.starts:
            tokens = self._to_device(self._train_batch(self.data, step, cfg.global_batch_seqs, cfg.seed,
                                                       start=start, count=self.micro))
            t = self.zeros_t
            if self.family.needs_time:  # one u for the global batch: the same seed on every worker
                time_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, TIME_STREAM))
                t = self._to_device(self._times(cfg.global_batch_seqs, start, self.micro, time_gen))
            gen = torch.Generator(self.gen_device).manual_seed(
                derive_seed(cfg.seed, step, CORRUPT_STREAM, start))
            self._begin()
            with autocast_context(self.precision, self.device), self._attention():
                loss = self.family.training_loss(self.engine, tokens, t, gen)
            self.engine.backward(loss)
            self.engine.step()
            total = loss.detach() if total is None else total + loss.detach()
        return total.float() / len(self.starts)


def train_steps(engine, optimizer, family, data, cfg: LoopConfig, plan: BatchPlan, *, rank: int,
                device: str, precision: str, state: LoopState, metrics,
                save: Callable[[LoopState], None] | None = None,
                on_log: Callable[[int, float, float], None] | None = None) -> LoopOutcome:
    """Train from state.step to cfg.total_steps. `metrics.write(rows)` gets the logged rows,
    `save(state)` is called every cfg.checkpoint_every_steps, `on_log(step, loss, lr)` drives a
    progress display. Raises DivergedError on a non-finite loss (the rows before it are written)."""
    run_step = _StepRunner(engine, family, data, cfg, plan, rank, device, precision)
    pending: list[torch.Tensor] = []  # this window's per-step losses, still on the device
    window = list(state.window)
    first_logged_step = state.step - len(window) + 1
    t0, first_step_time = time.perf_counter(), time.time()

    def flush(step_done: int, lr: float) -> None:
        nonlocal window
        window += _mean_over_workers(torch.stack(pending), plan.world_size).tolist() if pending else []
        pending.clear()
        try:
            _check_finite(window, first_logged_step)
        except DivergedError as err:
            metrics.write([{"step": step_done, "loss": None, "lr": lr, "error": str(err)}])
            raise

    for step in range(state.step, cfg.total_steps):
        lr = cfg.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pending.append(run_step(step))
        done = step + 1
        if done % cfg.log_every_steps == 0 or done == cfg.total_steps:
            flush(done, lr)
            row = {"step": done, "loss": sum(window) / len(window), "lr": lr,
                   "tokens": done * cfg.global_batch_seqs * cfg.seq_len, "flops": done * cfg.flops_per_step,
                   "wall_s": round(state.train_wall_s + time.perf_counter() - t0, 4)}
            metrics.write([row])
            if on_log is not None:
                on_log(done, row["loss"], lr)
            window, first_logged_step = [], done + 1
        if save is not None and cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0 \
                and done < cfg.total_steps:
            flush(done, lr)  # never checkpoint a diverged model
            save(LoopState(done, state.train_wall_s + time.perf_counter() - t0, list(window)))
    session_wall = time.perf_counter() - t0
    return LoopOutcome(cfg.total_steps, state.train_wall_s + session_wall,
                       cfg.total_steps - state.step, session_wall, first_step_time)
