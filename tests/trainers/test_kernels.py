"""trainers/kernels.py: the compiled fast paths compute the eager maths."""

from __future__ import annotations

import pytest
import torch

from trainers import kernels
from trainers.backbone import forbid_token
from trainers.families.duo import duo_nelbo_per_token


@pytest.fixture
def compiled():
    """Compilation on for one test (on the CPU, through inductor), off again afterwards."""
    kernels.configure(True, "cpu")
    yield
    kernels.configure(False, "cpu")


def test_auto_compiles_on_gpus_only():
    assert kernels.resolve_auto("auto", "cuda:0") and not kernels.resolve_auto("auto", "cpu")
    assert kernels.resolve_auto(True, "cpu") and not kernels.resolve_auto(False, "cuda:0")
    # The default every test runs with: the eager maths itself.
    assert kernels._maybe_compiled("ce", kernels._cross_entropy_without) is kernels._cross_entropy_without


def test_fused_head_auto_is_on_for_gpus_only():
    """`resources.fused_head: auto` (the default): on CUDA, where it is faster; off on a CPU."""
    try:
        kernels.configure(False, "cuda:0", fused_head="auto")
        assert kernels.fused_head_enabled()
        kernels.configure(False, "cpu", fused_head="auto")
        assert not kernels.fused_head_enabled()
        kernels.configure(False, "cpu", fused_head=True)
        assert kernels.fused_head_enabled()
    finally:
        kernels.configure(False, "cpu")


def test_attention_context_is_a_no_op_on_cpu():
    q = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with kernels.attention_context("cpu", "cudnn"):  # a GPU backend asked for on a CPU: ignored
        got = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.equal(got, want)


def test_compiled_loss_heads_equal_eager(compiled):
    g = torch.Generator().manual_seed(0)
    for n_rows in (37, 51):  # the scored-row count changes every step (dynamic shapes)
        logits = torch.randn(n_rows, 29, generator=g, requires_grad=True)
        targets = torch.randint(0, 28, (n_rows,), generator=g)
        got = kernels.cross_entropy_without(logits, targets, 28)
        want = torch.nn.functional.cross_entropy(forbid_token(logits, 28), targets, reduction="none")
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got.sum(), logits)[0],
                                   torch.autograd.grad(want.sum(), logits)[0])
    logits = torch.randn(2, 6, 29, generator=g)
    xt, x0 = torch.randint(0, 28, (2, 6), generator=g), torch.randint(0, 28, (2, 6), generator=g)
    alpha, dalpha = torch.tensor([[0.3], [0.8]]), torch.tensor([[-1.0], [-1.0]])
    want = duo_nelbo_per_token(torch.log_softmax(forbid_token(logits, 28), -1), xt, x0, alpha,
                               dalpha, 28)
    torch.testing.assert_close(kernels.duo_nelbo_from_logits(logits, xt, x0, alpha, dalpha, 28, 28),
                               want)


def test_compiled_blocks_keep_outputs_and_checkpoint_keys(random_model):
    model = random_model("causal")
    x = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(1))
    want = model(input_ids=x)
    keys = list(model.state_dict())
    kernels.compile_blocks(model)
    got = model(input_ids=x)
    # Inductor fuses and reorders float32 sums (layer norm, GELU), so single elements differ in
    # the last bits; the whole output agrees to float32 rounding.
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert list(model.state_dict()) == keys
