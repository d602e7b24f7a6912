"""trainers/fused_head.py: the chunked head + loss computes the losses and gradients of the plain
head followed by the families' loss kernels; every family's training loss and validation agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers import kernels
from trainers.backbone import forbid_token
from trainers.families import build_family
from trainers.families.duo import duo_nelbo_per_token, duo_rows
from trainers.families.registry import FAMILIES
from trainers.fused_head import cross_entropy_rows, fused_head_loss

N, D, K, FORBID = 37, 12, 29, 28


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(K, D, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(K, generator=g, dtype=dtype) * 0.5).requires_grad_()
    return g, x, w, b


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("rows_per_chunk,align", [(1, 1), (7, 1), (N, 1), (7, 16)])
def test_cross_entropy_matches_the_plain_head(rows_per_chunk, align):
    """Chunks that split the rows unevenly; align 16: the head padded as on a GPU (K = 29 -> 32)."""
    g, x, w, b = _inputs()
    targets = torch.randint(0, K - 1, (N,), generator=g)
    weights = torch.rand(N, generator=g, dtype=torch.float64)
    want_rows = F.cross_entropy(forbid_token(F.linear(x, w, b), FORBID), targets, reduction="none")
    want = (want_rows * weights).sum()
    got = fused_head_loss(x, w, b, cross_entropy_rows(targets, FORBID, weights), rows_per_chunk=rows_per_chunk,
                          align=align)
    torch.testing.assert_close(got.rows, want_rows.detach())
    torch.testing.assert_close(got.loss, want)
    for a, e in zip(_grads(got.loss * 3.0, x, w, b), _grads(want * 3.0, x, w, b)):
        torch.testing.assert_close(a, e)  # backward scales by the upstream gradient
    assert not got.rows.requires_grad


def test_duo_rows_match_the_plain_nelbo():
    g, x, w, b = _inputs()
    xt, x0 = torch.randint(0, K - 1, (N,), generator=g), torch.randint(0, K - 1, (N,), generator=g)
    x0[:9] = xt[:9]  # x_t == x_0 on some rows: both picks hit one column
    alpha = torch.rand(N, generator=g, dtype=torch.float64) * 0.9 + 0.05
    dalpha = -torch.ones(N, dtype=torch.float64)
    log_p = torch.log_softmax(forbid_token(F.linear(x, w, b), FORBID), -1)
    want_rows = duo_nelbo_per_token(log_p[:, None], xt[:, None], x0[:, None], alpha[:, None],
                                    dalpha[:, None], K - 1)[:, 0]
    want = want_rows.sum() / N
    got = fused_head_loss(x, w, b, duo_rows(xt, x0, alpha, dalpha, K - 1, FORBID, 1.0 / N), rows_per_chunk=8,
                          align=64)
    torch.testing.assert_close(got.rows, want_rows.detach())
    for a, e in zip(_grads(got.loss, x, w, b), _grads(want, x, w, b)):
        torch.testing.assert_close(a, e)


def test_duo_closed_form_gradients_equal_autograd():
    """duo_nelbo_stat_grads against autograd through duo_nelbo_from_stats (the fused head's
    fallback when a loss has no closed form)."""
    from dataclasses import replace

    g, x, w, b = _inputs()
    xt, x0 = torch.randint(0, K - 1, (N,), generator=g), torch.randint(0, K - 1, (N,), generator=g)
    x0[:9] = xt[:9]
    alpha = torch.rand(N, generator=g, dtype=torch.float64) * 0.98 + 0.01
    weights = torch.rand(N, generator=g, dtype=torch.float64)
    request = duo_rows(xt, x0, alpha, -torch.ones(N, dtype=torch.float64), K - 1, FORBID, weights)
    closed = fused_head_loss(x, w, b, request, rows_per_chunk=8)
    by_autograd = fused_head_loss(x, w, b, replace(request, stat_grads=None), rows_per_chunk=8)
    for a, e in zip(_grads(closed.loss, x, w, b), _grads(by_autograd.loss, x, w, b)):
        torch.testing.assert_close(a, e)


def test_no_grad_gives_the_rows_only():
    g, x, w, b = _inputs(torch.float32)
    targets = torch.randint(0, K - 1, (N,), generator=g)
    with torch.no_grad():
        got = fused_head_loss(x, w, None, cross_entropy_rows(targets, FORBID), rows_per_chunk=5)
        want = F.cross_entropy(forbid_token(F.linear(x, w), FORBID), targets, reduction="none")
    torch.testing.assert_close(got.rows, want)
    torch.testing.assert_close(got.loss, want.sum())


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_chunk_maths_equal_eager(autocast):
    """On a GPU the chunk maths run compiled (resources.compile); inductor on the CPU here. Compiled,
    the picked columns are added by comparison, not by a scatter: Duo's two picks include a
    repeated column (x_t = x_0), whose gradients must add up."""
    g, x, w, b = _inputs(torch.float32)
    xt, x0 = torch.randint(0, K - 1, (N,), generator=g), torch.randint(0, K - 1, (N,), generator=g)
    x0[:5] = xt[:5]
    alpha = torch.rand(N, generator=g) * 0.9 + 0.05
    tolerance = {"rtol": 2e-2, "atol": 1e-3} if autocast else {}  # bf16 logits: one rounding apart
    for request in (cross_entropy_rows(xt, FORBID, 1.0 / N),
                    duo_rows(xt, x0, alpha, -torch.ones(N), K - 1, FORBID, 1.0 / N)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            want = fused_head_loss(x, w, b, request, compiled=False, rows_per_chunk=16)
            got = fused_head_loss(x, w, b, request, compiled=True, rows_per_chunk=16)
        torch.testing.assert_close(got.rows, want.rows, **tolerance)
        for a, e in zip(_grads(got.loss, x, w, b), _grads(want.loss, x, w, b)):
            torch.testing.assert_close(a, e, **tolerance)


@pytest.mark.parametrize("name", ["ar", "duo"])
def test_the_fused_head_traces_inside_a_compiled_model(name, random_model, monkeypatch):
    """torch.compile of a whole model (benchmarks/train_throughput.py --compile whole) traces the
    fused head's forward, an autograd.Function, with its chunk loop and the gradient buffers it
    saves for backward (a buffer rebound by `+=` there failed to trace). Matches eager."""
    from trainers.families.registry import get_entry

    # Traced afresh, as in a run's process: after the other tests' compiles in this process, Duo's
    # trace has failed inside dynamo (an assertion in its autograd.Function handling, torch 2.13);
    # every family compiled one after another from a fresh process does not.
    monkeypatch.setattr(kernels, "_COMPILED", {})
    torch._dynamo.reset()
    model = random_model(get_entry(name).attention, vocab_size=64, mask_token_id=63, std=0.1)
    tokens = torch.randint(0, 63, (2, 16), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    try:
        kernels.configure(True, "cpu", fused_head=True)
        # compiled first: it traces the chunk kernels
        got, want = (family_outputs(name, {}, forward, tokens, t) for forward in (torch.compile(model), model))
    finally:
        kernels.configure(False, "cpu")
    torch.testing.assert_close(got[0], want[0])
    for a, e in zip(got[1], want[1]):
        torch.testing.assert_close(a, e)
    torch.testing.assert_close(got[2], want[2])


def test_bf16_autocast_runs_the_head_in_bf16():
    """Under autocast the plain head multiplies in bf16; so does the fused one, and the gradients
    come back in the inputs' dtypes. Agreement is to bf16 rounding (the weight gradient is summed
    over chunks in float32 here, in one bf16 product there)."""
    g, x, w, b = _inputs(torch.float32)
    targets = torch.randint(0, K - 1, (N,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(forbid_token(F.linear(x, w, b), FORBID), targets, reduction="none").mean()
        got = fused_head_loss(x, w, b, cross_entropy_rows(targets, FORBID, 1.0 / N), rows_per_chunk=8)
    assert got.loss.dtype == torch.float32
    torch.testing.assert_close(got.loss, want, rtol=1e-2, atol=1e-2)
    for a, e, p in zip(_grads(got.loss, x, w, b), _grads(want, x, w, b), (x, w, b)):
        assert a.dtype == p.dtype
        torch.testing.assert_close(a, e, rtol=3e-2, atol=3e-3)


@pytest.fixture
def fused():
    kernels.configure(False, "cpu", fused_head=True)
    yield
    kernels.configure(False, "cpu")


def family_outputs(name: str, options: dict, model, tokens: torch.Tensor, t: torch.Tensor,
                   autocast: bool = False) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """(training loss, every parameter's gradient, validation nats) of family `name` on `model`
    (a backbone, or torch.compile of one), with the head and kernels kernels.configure last chose;
    seeded generators on the tokens' device. Also used by benchmarks/fused_head_gpu_diag.py."""
    family = build_family(name, options, vocab_size=model.config.vocab_size,
                          mask_token_id=model.config.mask_token_id)
    device = tokens.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = family.training_loss(model, tokens, t, torch.Generator(device).manual_seed(5))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            nats, _ = family.validation_nats(model, tokens, t, torch.Generator(device).manual_seed(6))
    return loss.detach(), grads, nats


CASES = [(name, {}) for name in FAMILIES] + [("mdlm", {"objective": "nelbo"}), ("esolm", {"alpha_0": 0.5})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o}" for n, o in CASES])
def test_every_family_trains_and_validates_the_same_through_the_fused_head(name, options, random_model,
                                                                            request, monkeypatch):
    from trainers import backbone
    from trainers.families.registry import get_entry

    calls = []
    monkeypatch.setattr(backbone, "fused_head_loss", lambda *a, **k: calls.append(1) or fused_head_loss(*a, **k))

    model = random_model(get_entry(name).attention, vocab_size=24, mask_token_id=23).double()
    tokens = torch.randint(0, 23, (3, 10), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    want = family_outputs(name, options, model, tokens, t)
    request.getfixturevalue("fused")
    assert not calls
    got = family_outputs(name, options, model, tokens, t)
    assert len(calls) == (4 if options.get("alpha_0", 1.0) < 1 else 2)  # training + validation
    torch.testing.assert_close(got[0], want[0])
    for a, e in zip(got[1], want[1]):
        torch.testing.assert_close(a, e)
    torch.testing.assert_close(got[2], want[2])


# ---------------------------------------------------------------- on a GPU (`pytest -m gpu`)


def _heads_on(device: str, name: str, options: dict, autocast: bool, random_model) -> dict:
    """Training loss, gradients and validation of one family through the plain and the fused head,
    with compiled kernels as a GPU run has them; vocabulary 1001 so the head is padded (align 64)."""
    from trainers.families.registry import get_entry

    vocab, mask = 1001, 1000
    model = random_model(get_entry(name).attention, d_model=64, vocab_size=vocab, mask_token_id=mask,
                         std=0.1).to(device)
    tokens = torch.randint(0, mask, (4, 128), generator=torch.Generator().manual_seed(2)).to(device)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], device=device)
    out = {}
    try:
        for fused in (False, True):
            kernels.configure(True, device, fused_head=fused)
            loss, grads, nats = family_outputs(name, options, model, tokens, t, autocast)
            out[fused] = (loss.double(), [g.double() for g in grads], nats.double())
    finally:
        kernels.configure(False, "cpu")
    return out


def _assert_heads_agree(out: dict, rel: float) -> None:
    (loss, grads, nats), (f_loss, f_grads, f_nats) = out[False], out[True]
    assert abs(f_loss - loss) <= rel * abs(loss)
    assert (f_nats - nats).norm() <= rel * nats.norm()
    for g, f in zip(grads, f_grads):  # relative in norm: bf16 rounds single entries coarsely
        assert (f - g).norm() <= rel * g.norm() + 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o}" for n, o in CASES])
def test_fused_head_on_cuda_matches_the_plain_head(name, options, autocast, random_model):
    """The path a GPU run takes by default (resources.fused_head: auto): triton chunk kernels, the
    head padded to 64 columns, cuBLAS. fp32 agrees to float32 rounding; bf16 autocast to bf16's."""
    _assert_heads_agree(_heads_on("cuda:0", name, options, autocast, random_model),
                        rel=2e-2 if autocast else 1e-4)
