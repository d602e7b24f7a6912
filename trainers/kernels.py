"""GPU fast paths for one training process: compiled blocks, fused loss kernels, attention backend.

The maths is defined once, eagerly, in the backbone and the families; this module only decides how
it runs. `configure(compile, device)` (the run's resources.compile) is called once per process by the
training entry point (a run is one process: DeepSpeed initialises once per process), before the
first step:

- ``compile: false`` (``auto`` on a CPU, and what every test runs): plain eager PyTorch.
- ``compile: true`` (``auto`` on CUDA): `compile_blocks` compiles each transformer block
  (regional compilation: one compiled graph serves all 12 blocks, so a 12-layer model compiles in
  seconds, and the families' data-dependent code around the backbone - boolean row selection,
  permutations, seeded generators - stays eager where torch.compile would break the graph anyway);
  the loss heads below (`cross_entropy_without`, `duo_nelbo_from_logits`) are compiled too. Eager,
  each of them makes several float32 copies of the [rows, K] logits (the upcast, the -inf column,
  the log-softmax, and as many again in backward): at the 113M shape on a GPU that is tens of GB
  of memory traffic per step; compiled, each is one read of the logits forward and one backward.

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

CompileMode = Literal["auto"] | bool
AttentionBackend = Literal["auto", "default", "cudnn", "flash", "efficient"]
_STATE: dict = {"compile": False, "attention": "auto", "fused_head": False}


def resolve_auto(choice: CompileMode, device: str) -> bool:
    """`auto` means on CUDA only, for compile and for fused_head. compile: on a CPU every run of a
    sweep would pay the compiler's start-up (a 20-step MDLM test run: 3.9 s compiled against 0.4 s
    eager), against a per-run overhead budget of 3 s, for the small gain of fusing a tiny model's
    elementwise work. fused_head: at a CPU run's small vocabulary a chunk's fixed costs show."""
    if choice == "auto":
        return device.startswith("cuda")
    return bool(choice)


def configure(compile_mode: CompileMode, device: str, attention: AttentionBackend = "auto",
              fused_head: CompileMode = False) -> bool:
    """Set this process's choices (module docstring); returns whether compilation is on."""
    _STATE["compile"] = resolve_auto(compile_mode, device)
    _STATE["attention"] = attention
    _STATE["fused_head"] = resolve_auto(fused_head, device)
    return _STATE["compile"]


def compiling() -> bool:
    return _STATE["compile"]


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


# ---------------------------------------------------------------- loss heads (pure maths)


def _cross_entropy_without(logits: torch.Tensor, targets: torch.Tensor, token_id: int) -> torch.Tensor:
    return F.cross_entropy(forbid_token(logits, token_id), targets, reduction="none")


def _duo_nelbo_from_logits(logits, xt, x0, alpha_t, dalpha_t, n_real: int, token_id: int):
    from trainers.families.duo import duo_nelbo_per_token  # duo.py imports this module

    log_x_theta = torch.log_softmax(forbid_token(logits, token_id), dim=-1)
    return duo_nelbo_per_token(log_x_theta, xt, x0, alpha_t, dalpha_t, n_real)


_COMPILED: dict[str, object] = {}


def _maybe_compiled(name: str, fn):
    if not _STATE["compile"]:
        return fn
    if name not in _COMPILED:  # the number of scored rows varies per step (MDLM, Eso-LM)
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


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
