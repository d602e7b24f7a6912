"""The output head and its loss in one pass over row chunks: the [rows, K] logits are never whole.

Every family's loss reads the head's logits row by row through a few statistics: the log-partition
lse = logsumexp over the allowed columns (the [MASK] column is at -inf, SUBS), the raw logits of a
few picked columns (the target; Duo's x_t and x_0), and for Duo the sum over columns of
softplus(log p_j + log r). A row's loss is a small function of those (`RowStats`), and so is its
gradient with respect to the logits (`grad_logits`). So the head can run chunk by chunk: logits of
a chunk of rows, their statistics, the loss, and - when a gradient is wanted - the gradient of the
logits, pushed at once through the head's two backward matmuls (Liger-Kernel's fused linear
cross-entropy, generalised to a loss of row statistics). The logits of one chunk are the largest
thing alive, instead of the logits of every row, their float32 copy, their log-softmax and the
gradients of each (at the 113M shape, 32K rows x 32001 columns: 4 GB per float32 copy).

The gradient is computed in the forward, so the loss's weights per row must be known then: a head
returns the weighted sum of its row losses (differentiable: backward only scales the stored
gradients) and the row losses themselves (detached, for validation and the per-sequence sums).
The families already know their weights (AR: 1/n; MDLM: w(t) per sequence over B L; Duo and Eso-LM:
1/(B L)). Forward FLOPs are the plain head's; no matmul is recomputed.

Selected by `resources.fused_head` (trainers/kernels.py `configure`): `auto`, the default, is on for
CUDA (an H100 at the 113M shape: AR 3%, Duo 13% more tokens/s, benchmarks/GPU_NOTES.md) and off on a
CPU (slower at a small vocabulary). The chunked sums round differently from the whole-row kernels
(float32 agreement, tests/trainers/test_fused_head.py).
This module is pure maths plus torch; the backbone calls `fused_head_loss` inside its output layer,
so under ZeRO-3 the head's weights are gathered when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

# A chunk's rows, from a budget of bytes for its float32 logits, per device type. CPU: 64 MiB (524
# rows at K = 32001), for peak memory; a chunk's fixed costs are small against a CPU's matmuls. GPU:
# 1 GiB (8,388 rows: 4 chunks for a micro-batch of 16 x 2048), because every chunk costs a dozen
# kernel launches and a read-modify-write of the float32 weight gradient [K, d]: on an H100, AR at
# 256 MiB chunks lost the whole gain of the fused head (393,982 against 405,407 tokens/s).
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 2**30}


class RowStats(NamedTuple):
    """Statistics of one chunk's logits, float32, one entry per row (picked: [c, P])."""

    lse: torch.Tensor
    picked: torch.Tensor
    log1p_sum: torch.Tensor | None  # sum_j softplus(logit_j - lse + log_r); only with log_r


class HeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar: sum over rows of weight * row loss (differentiable)
    rows: torch.Tensor  # [n] row losses, float32, detached


@dataclass(frozen=True)
class RowLoss:
    """What a family asks of the head. picks: LongTensor[n, P], the columns whose raw logits the
    loss reads; forbid_id: the column at -inf; loss_fn(stats, rows) -> FloatTensor[c], the loss of
    the rows `rows` (a slice) from their RowStats, in differentiable torch ops; weights: [n], one
    number for every row, or None (= 1); log_r: [n] or None, asks for log1p_sum (Duo);
    stat_grads(stats, rows, row_weights) -> the gradients of sum(row_weights * loss) with respect
    to (lse, picked, log1p_sum) in closed form, or None to get them by autograd (a few dozen small
    kernels per chunk)."""

    picks: torch.Tensor
    forbid_id: int
    loss_fn: Callable[[RowStats, slice], torch.Tensor]
    weights: torch.Tensor | float | None = None
    log_r: torch.Tensor | None = None
    stat_grads: Callable | None = None


def _cross_entropy_grads(stats: RowStats, rows: slice, row_weights: torch.Tensor):
    return row_weights, -row_weights[:, None], None


def cross_entropy_rows(targets: torch.Tensor, forbid_id: int,
                       weights: torch.Tensor | float | None = None) -> RowLoss:
    """-log softmax(logits)[target] per row, [MASK] excluded (kernels.cross_entropy_without)."""
    return RowLoss(targets[:, None], forbid_id, lambda stats, rows: stats.lse - stats.picked[:, 0],
                   weights, stat_grads=_cross_entropy_grads)


# ---------------------------------------------------------------- per-chunk maths (pure)


def row_stats(logits: torch.Tensor, picks: torch.Tensor,
              log_r: torch.Tensor | None) -> tuple[RowStats, torch.Tensor | None]:
    """(RowStats, sum_j sigmoid(logit_j - lse + log_r) or None) of logits [c, K] in any dtype,
    the forbidden column already at -inf (it then adds nothing to any sum)."""
    wide = logits.float() if logits.element_size() < 4 else logits
    lse = torch.logsumexp(wide, dim=-1)
    picked = wide.gather(1, picks)
    if log_r is None:
        return RowStats(lse, picked, None), None
    z = wide - lse[:, None]
    z += log_r[:, None]
    return RowStats(lse, picked, F.softplus(z).sum(-1)), torch.sigmoid(z).sum(-1)


def grad_logits(logits: torch.Tensor, picks: torch.Tensor, stats: RowStats,
                sigmoid_sum: torch.Tensor | None, log_r: torch.Tensor | None, grad_lse: torch.Tensor,
                grad_picked: torch.Tensor, grad_log1p_sum: torch.Tensor | None) -> torch.Tensor:
    """d(loss)/d(logits), [c, K] in logits' dtype, from the loss's gradients with respect to the
    row statistics: d lse/d l_k = p_k; d picked_p/d l_k = [k = pick_p];
    d log1p_sum/d l_k = s_k - p_k sum_j s_j with s_j = sigmoid(l_j - lse + log_r).

    Eager, it consumes float32 logits: the gradient is built in their memory (one [c, K] buffer
    fewer). Compiled, it is one pointwise kernel from the logits to the gradient in their dtype:
    out of place (an in-place op on an input is written back to it, a pass more) and the picked
    columns added by comparison (`_add_picked`)."""
    wide = logits.float() if logits.element_size() < 4 else logits
    grad = wide - stats.lse[:, None] if torch.compiler.is_compiling() else wide.sub_(stats.lse[:, None])
    sig = None
    if log_r is not None:
        sig = (grad + log_r[:, None]).sigmoid_()
    grad.exp_()  # p; 0 in the forbidden column, as is sig
    if sig is not None:
        sig.addcmul_(grad, sigmoid_sum[:, None], value=-1.0)  # s - p sum_j s_j
    grad.mul_(grad_lse[:, None])
    if sig is not None:
        grad.addcmul_(sig, grad_log1p_sum[:, None])
    return _add_picked(grad, picks, grad_picked).to(logits.dtype)


def _add_picked(grad: torch.Tensor, picks: torch.Tensor, grad_picked: torch.Tensor) -> torch.Tensor:
    """grad[r, picks[r, p]] += grad_picked[r, p] for every pick p (repeated columns add up).

    Compiled, as a comparison with the column index, which inductor fuses into the pointwise kernel
    that writes the gradient. A scatter splits that kernel in two, with the float32 gradient written
    and read back between them: on an H100 (AR, bf16 weights, chunks of 8,388 x 32,064) the two took
    1.9 ms a chunk, 1.24 of it the second one, the cast to bf16 (benchmarks/GPU_NOTES.md)."""
    if not torch.compiler.is_compiling():
        return grad.scatter_add_(1, picks, grad_picked)
    columns = torch.arange(grad.shape[1], device=grad.device)
    for p in range(picks.shape[1]):
        grad = grad + torch.where(columns == picks[:, p, None], grad_picked[:, p, None], 0.0)
    return grad


def _kernels(compiled: bool) -> tuple[Callable, Callable]:
    if not compiled:
        return row_stats, grad_logits
    from trainers.kernels import compiled_once  # kernels imports the backbone, which imports this module

    return compiled_once("row_stats", row_stats), compiled_once("grad_logits", grad_logits)


def chunk_rows(n_columns: int, device_type: str) -> int:
    return max(1, CHUNK_BYTES.get(device_type, CHUNK_BYTES["cuda"]) // (4 * n_columns))


# ---------------------------------------------------------------- the fused head


def _row_weights(weights, part: slice, like: torch.Tensor) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        return weights[part].to(like.dtype)
    return torch.full_like(like, 1.0 if weights is None else weights)


def _loss_and_stat_grads(request: RowLoss, stats: RowStats, part: slice, want_grad: bool):
    """(row losses [c], their weighted sum, and when want_grad the gradients of that sum with
    respect to lse, picked and log1p_sum: closed form when the request has one, else autograd)."""
    row_weights = _row_weights(request.weights, part, stats.lse)
    if not want_grad or request.stat_grads is not None:
        chunk_loss = request.loss_fn(stats, part).to(stats.lse.dtype)
        grads = request.stat_grads(stats, part, row_weights) if want_grad else None
        return chunk_loss, (chunk_loss * row_weights).sum(), grads
    leaves = [None if stat is None else stat.detach().requires_grad_() for stat in stats]
    with torch.enable_grad():
        chunk_loss = request.loss_fn(RowStats(*leaves), part).to(stats.lse.dtype)
        weighted = (chunk_loss * row_weights).sum()
        wanted = [leaf for leaf in leaves if leaf is not None]
        found = iter(torch.autograd.grad(weighted, wanted, allow_unused=True))
    grads = [None if leaf is None else next(found) for leaf in leaves]
    grads = [torch.zeros_like(stat) if grad is None and stat is not None else grad
             for grad, stat in zip(grads, stats)]  # a statistic the loss does not read
    return chunk_loss.detach(), weighted.detach(), tuple(grads)


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, request: RowLoss, compute_dtype, compiled: bool,
                rows_per_chunk: int, align: int):
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        stats_fn, grad_fn = _kernels(compiled)
        n_out, pad = weight.shape[0], -weight.shape[0] % align
        # Zero rows pad the head to `align` columns (backbone.aligned_linear: cuBLAS's fast kernels
        # need 16-byte aligned rows); their logits are set to -inf below, so they add nothing.
        x = features.to(compute_dtype)
        w = F.pad(weight.to(compute_dtype), (0, 0, 0, pad))
        b = None if bias is None else F.pad(bias.to(compute_dtype), (0, pad))
        n, wide = x.shape[0], torch.promote_types(compute_dtype, torch.float32)
        rows = torch.empty(n, dtype=wide, device=x.device)
        total = torch.zeros((), dtype=wide, device=x.device)
        grad_x = torch.empty_like(x) if want_grad else None
        grad_w = torch.zeros(w.shape, dtype=wide, device=x.device) if want_grad else None
        grad_b = torch.zeros(w.shape[0], dtype=wide, device=x.device) \
            if want_grad and bias is not None else None
        for start in range(0, n, rows_per_chunk):
            part = slice(start, min(n, start + rows_per_chunk))
            picks = request.picks[part]
            log_r = None if request.log_r is None else request.log_r[part].to(wide)
            logits = F.linear(x[part], w, b)
            logits[:, request.forbid_id] = float("-inf")  # SUBS (backbone.forbid_token), in place: ours
            if pad:
                logits[:, n_out:] = float("-inf")
            stats, sigmoid_sum = stats_fn(logits, picks, log_r)
            rows[part], weighted, grads = _loss_and_stat_grads(request, stats, part, want_grad)
            total += weighted
            if not want_grad:
                continue
            g = grad_fn(logits, picks, stats, sigmoid_sum, log_r, *grads)
            del logits  # float32: g is the same memory
            torch.mm(g, w, out=grad_x[part])
            if g.dtype == grad_w.dtype:
                grad_w.addmm_(g.t(), x[part])
            else:  # bf16 product, accumulated in float32 across chunks
                grad_w.add_(g.t() @ x[part])
            if grad_b is not None:
                grad_b.add_(g.sum(0, dtype=wide))
        if want_grad and pad:  # the padding rows dropped: copies, since torch.compile of a whole
            # model (torch 2.13) refuses to save for backward a view of a tensor made in this forward
            grad_w = grad_w[:n_out].clone()
            grad_b = None if grad_b is None else grad_b[:n_out].clone()
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(rows)
        return total, rows

    @staticmethod
    def backward(ctx, grad_total, _grad_rows):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        dtype_x, dtype_w, dtype_b = ctx.dtypes
        scale = grad_total
        return ((grad_x * scale.to(grad_x.dtype)).to(dtype_x), (grad_w * scale).to(dtype_w),
                None if grad_b is None else (grad_b * scale).to(dtype_b), None, None, None, None, None)


def fused_head_loss(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    request: RowLoss, *, compiled: bool | None = None,
                    rows_per_chunk: int | None = None, align: int = 1) -> HeadOutput:
    """The loss of `request` on the head F.linear(features, weight, bias), chunk by chunk.

    features [n, d]; weight [K, d]; bias [K] or None. Runs in autocast's dtype when autocast is on
    (as F.linear would), else in the weight's. Gradients reach features, weight and bias.
    compiled None = as this process's kernels.configure chose (torch.compile of the chunk maths);
    align: the head's output width is padded to a multiple of it (zero rows, -inf logits)."""
    if compiled is None:
        from trainers import kernels  # kernels imports the backbone, which imports this module

        compiled = kernels.compiling()
    device_type = features.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else weight.dtype)
    with torch.autocast(device_type, enabled=False):
        total, rows = _FusedHead.apply(features, weight, bias, request, compute_dtype, compiled,
                                       rows_per_chunk or chunk_rows(weight.shape[0], device_type), align)
    return HeadOutput(total, rows)
