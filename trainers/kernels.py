"""GPU fast paths for one training process: compiled blocks or trunk, fused loss kernels, attention.

The maths is defined once, eagerly, in the backbone and the families; this module only decides how
it runs. `configure(compile, device)` (the run's resources.compile) is called once per process by the
training entry point (a run is one process: DeepSpeed initialises once per process), before the
first step:

- ``compile: false`` (``auto`` on a CPU, and what every test runs): plain eager PyTorch.
- ``compile: true`` or ``blocks`` (``auto`` on CUDA): `compile_blocks` compiles each transformer block
  (regional compilation: one compiled graph serves all 12 blocks, so a 12-layer model compiles in
  seconds, and the families' data-dependent code around the backbone - boolean row selection,
  permutations, seeded generators - stays eager where torch.compile would break the graph anyway).
- ``compile: trunk``: `compile_trunk` compiles the backbone up to the head (`DiTModel.trunk`:
  embedding, time conditioning, every block, the un-permutation, the final norm) as one graph, for
  every family: its shapes are fixed by the micro-batch, and the row selection of MDLM and Eso-LM
  comes after it (compiling the whole model instead recompiled at every step for them,
  benchmarks/GPU_NOTES.md "Fourth lease"). It fuses across block boundaries: on an H100, AR ran
  4.2% faster than with compiled blocks ("Fifth lease"). With ``cuda_graphs`` (benchmarks only) it
  replays the trunk's forward and backward as CUDA graphs; that gained nothing there, since the
  time between kernels was DeepSpeed's throughput timer synchronising, not launch gaps. Compiles
  for longer than blocks (the whole model took about 90 s per process at 12 layers on a GPU).
- ``compile: whole``: the whole model, head and loss included, as one graph (`nn.Module.compile` in
  place), for the families whose shapes are fixed (AR and Duo: the head scores every position;
  planning refuses it for runs of the others, whose chunked head loops over a varying number of
  rows and would recompile at every step). The fused head's chunk maths then fuse with the rest: on an
  H100, AR at micro-batches of 32 (bf16 weights, fused head) ran 479,808 tokens/s whole against
  434,806 with the trunk (benchmarks/GPU_NOTES.md "Fifth lease", the benchmark's loop).

Either way the loss heads below (`cross_entropy_without`, `duo_nelbo_from_logits`) are compiled.
Eager, each of them makes several float32 copies of the [rows, K] logits (the upcast, the -inf
column, the log-softmax, and as many again in backward): at the 113M shape on a GPU that is tens of
GB of memory traffic per step; compiled, each is one read of the logits forward and one backward.

``fused_head: true`` (resources.fused_head; ``auto``, the default, = on CUDA only): the families'
training losses run the output head and the loss together, chunk by chunk (trainers/fused_head.py),
and never hold the whole [rows, K] logits; validation under no_grad does the same. On an H100 at
the 113M shape that made AR 3% and Duo 13% faster; on a CPU, at the demo's vocabulary of 512, whole
steps 0-11% slower (benchmarks/GPU_NOTES.md "The fused head").

`attention_context(device)`: the scaled_dot_product_attention backends to try, in order. On a
Hopper GPU cuDNN's attention goes first (AR's attention kernels at the 113M shape: 13.3 ms per step
against 19.8 ms for PyTorch's default flash attention 2 on an H200, benchmarks/GPU_NOTES.md);
elsewhere PyTorch's default order.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F

from trainers.backbone import forbid_token

CompileMode = Literal["auto", "blocks", "trunk", "whole"] | bool
FusedHeadMode = Literal["auto"] | bool
AttentionBackend = Literal["auto", "default", "cudnn", "flash", "efficient"]
_STATE: dict = {"compile": False, "attention": "auto", "fused_head": False, "cuda_graphs": False}


def resolve_scope(choice: CompileMode, device: str) -> Literal["blocks", "trunk", "whole"] | None:
    """What `compile` compiles on this device: None (eager), "blocks", "trunk" or "whole"."""
    if choice in ("blocks", "trunk", "whole"):
        return choice
    return "blocks" if resolve_auto(choice, device) else None


def resolve_auto(choice: Literal["auto"] | bool, device: str) -> bool:
    """`auto` means on CUDA only, for compile and for fused_head. compile: on a CPU every run of a
    sweep would pay the compiler's start-up (a 20-step MDLM test run: 3.9 s compiled against 0.4 s
    eager), against a per-run overhead budget of 3 s, for the small gain of fusing a tiny model's
    elementwise work. fused_head: at a CPU run's small vocabulary a chunk's fixed costs show."""
    if choice == "auto":
        return device.startswith("cuda")
    return bool(choice)


def configure(compile_mode: CompileMode, device: str, attention: AttentionBackend = "auto",
              fused_head: FusedHeadMode = False, cuda_graphs: bool = False) -> bool:
    """Set this process's choices (module docstring); returns whether compilation is on.
    cuda_graphs: replay the compiled trunk as CUDA graphs (compile: trunk on CUDA only)."""
    scope = resolve_scope(compile_mode, device)
    _STATE["compile"] = scope or False
    _STATE["attention"] = attention
    _STATE["fused_head"] = resolve_auto(fused_head, device)
    _STATE["cuda_graphs"] = bool(cuda_graphs) and scope == "trunk" and device.startswith("cuda")
    return scope is not None


def compiling() -> bool:
    return bool(_STATE["compile"])


def compile_model(model: torch.nn.Module) -> None:
    """Compile `model` as configured: its blocks, its trunk, or all of it (compiled lazily, at the
    first step). `whole` compiles the module in place (nn.Module.compile, as DeepSpeed's
    engine.compile does): parameters and state_dict keys stay the eager model's."""
    if _STATE["compile"] == "whole":
        model.compile()
    elif _STATE["compile"] == "trunk":
        compile_trunk(model, cuda_graphs=_STATE["cuda_graphs"])
    elif _STATE["compile"]:
        compile_blocks(model)


def begin_micro_batch() -> None:
    """Before a micro-batch's forward: with CUDA graphs, tells torch a new iteration starts, so the
    previous replay's outputs (already consumed by its backward) may be overwritten."""
    if _STATE["cuda_graphs"]:
        torch.compiler.cudagraph_mark_step_begin()


def fast_paths() -> dict:
    """This process's choices as resolved for its device, for the result record."""
    return dict(_STATE)


def fused_head_enabled() -> bool:
    """Whether the families run their head and loss through trainers/fused_head.py."""
    return _STATE["fused_head"]


def compile_blocks(model: torch.nn.Module, mode: str | None = None) -> None:
    """Compile each transformer block in place (state_dict keys unchanged, so checkpoints and
    save_pretrained are the same as eager); mode: torch.compile's (None = its default)."""
    for block in model.blocks:
        block.compile(mode=mode)


def compile_trunk(model: torch.nn.Module, cuda_graphs: bool = False, mode: str | None = None) -> None:
    """Compile the backbone's trunk (`DiTModel.trunk`, everything but the head) as one graph; the
    model's parameters and state_dict are untouched. cuda_graphs: torch.compile's reduce-overhead
    mode (CUDA graph trees; on a CPU it has no effect). mode: another torch.compile mode."""
    mode = mode or ("reduce-overhead" if cuda_graphs else None)
    if cuda_graphs:
        keep_first_gradients(model)
    # The function, not the bound method: a deepcopy of the model then runs its own parameters.
    model.compiled_trunk = torch.compile(type(model).trunk, mode=mode)


def keep_first_gradients(model: torch.nn.Module) -> None:
    """Copy a parameter's gradient out of the CUDA graph's memory when it becomes `.grad`.

    Replayed as a CUDA graph, the trunk's backward returns its parameters' gradients in the
    graph's own memory. Autograd installs such a tensor as `.grad` where there is none (the first
    micro-batch after zero_grad) and adds into `.grad` after that; the next micro-batch's replay
    then overwrites the installed one: with gradient accumulation the step's gradient is wrong,
    silently on older torch and as an error on newer (pytorch/pytorch#169545, and the
    accumulation repro in #96693). So a hook copies the gradient when there is no `.grad` yet:
    one copy of the trunk's gradients per optimizer step, not per micro-batch."""
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(lambda grad, p=param: grad.clone() if p.grad is None else grad)


# ---------------------------------------------------------------- loss heads (pure maths)


def _cross_entropy_without(logits: torch.Tensor, targets: torch.Tensor, token_id: int) -> torch.Tensor:
    return F.cross_entropy(forbid_token(logits, token_id), targets, reduction="none")


def _duo_nelbo_from_logits(logits, xt, x0, alpha_t, dalpha_t, n_real: int, token_id: int):
    from trainers.families.duo import duo_nelbo_per_token  # duo.py imports this module

    log_x_theta = torch.log_softmax(forbid_token(logits, token_id), dim=-1)
    return duo_nelbo_per_token(log_x_theta, xt, x0, alpha_t, dalpha_t, n_real)


_COMPILED: dict[str, object] = {}


def compiled_once(name: str, fn):
    """torch.compile(fn, dynamic=True), made once per process (the number of scored rows varies per
    step: MDLM, Eso-LM); the loss heads here and the fused head's chunk maths. Inside a graph being
    compiled (compile: whole) `fn` itself, traced into that graph: reaching for _COMPILED there would
    guard the graph on the dict its first trace fills, and so compile the whole model twice."""
    if torch.compiler.is_compiling():
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


def _maybe_compiled(name: str, fn):
    return compiled_once(name, fn) if _STATE["compile"] else fn


def cross_entropy_without(logits: torch.Tensor, targets: torch.Tensor, token_id: int) -> torch.Tensor:
    """-log softmax(logits)[target] per row, FloatTensor[n], with column `token_id` ([MASK]) at
    -inf (SUBS / forbid_token). logits [n, K] in any float dtype, targets LongTensor[n]."""
    return _maybe_compiled("ce", _cross_entropy_without)(logits, targets, token_id)


def duo_nelbo_from_logits(logits, xt, x0, alpha_t, dalpha_t, n_real: int, token_id: int) -> torch.Tensor:
    """Duo's NELBO integrand per token, FloatTensor[B, L], from the model's logits [B, L, V]
    (trainers/families/duo.py duo_nelbo_per_token after the SUBS log-softmax)."""
    return _maybe_compiled("duo", _duo_nelbo_from_logits)(logits, xt, x0, alpha_t, dalpha_t, n_real,
                                                          token_id)


# ---------------------------------------------------------------- attention backend


def is_hopper(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.get_device_capability(device)[0] == 9


def attention_context(device: str, backend: AttentionBackend | None = None):
    """A context preferring one scaled_dot_product_attention backend (falling back to the others
    when it cannot serve a call, e.g. an explicit mask); backend None = the configured one: ``auto`` = cuDNN on Hopper, else PyTorch's
    default; ``default`` | ``cudnn`` | ``flash`` | ``efficient`` force the choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = backend or _STATE["attention"]
    if backend == "auto":
        backend = "cudnn" if is_hopper(device) else "default"
    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}.get(backend)
    if first is None or not device.startswith("cuda"):
        return contextlib.nullcontext()
    order = [first] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                   SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
    return sdpa_kernel(order, set_priority=True)
