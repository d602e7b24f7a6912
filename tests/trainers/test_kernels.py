"""trainers/kernels.py: the compiled fast paths compute the eager maths."""

from __future__ import annotations

import copy

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


def test_compile_scope_per_choice_and_device():
    """`resources.compile`: auto = blocks on CUDA only; true = blocks; trunk anywhere. CUDA graphs
    only replay a compiled trunk on CUDA."""
    scopes = {(choice, device): kernels.resolve_scope(choice, device)
              for choice in ("auto", True, False, "blocks", "trunk") for device in ("cpu", "cuda:0")}
    assert scopes == {("auto", "cpu"): None, ("auto", "cuda:0"): "blocks",
                      (True, "cpu"): "blocks", (True, "cuda:0"): "blocks",
                      (False, "cpu"): None, (False, "cuda:0"): None,
                      ("blocks", "cpu"): "blocks", ("blocks", "cuda:0"): "blocks",
                      ("trunk", "cpu"): "trunk", ("trunk", "cuda:0"): "trunk"}
    try:
        assert kernels.configure("trunk", "cuda:0", cuda_graphs=True) and kernels.fast_paths()["cuda_graphs"]
        assert kernels.fast_paths()["compile"] == "trunk"
        for choice, device in (("trunk", "cpu"), ("blocks", "cuda:0")):
            kernels.configure(choice, device, cuda_graphs=True)
            assert not kernels.fast_paths()["cuda_graphs"]
        assert not kernels.configure(False, "cpu") and kernels.fast_paths()["compile"] is False
    finally:
        kernels.configure(False, "cpu")


TRUNK_CASES = [("ar", {}), ("mdlm", {}), ("duo", {}), ("esolm", {}), ("esolm", {"alpha_0": 0.5})]


@pytest.mark.parametrize("name,options", TRUNK_CASES, ids=[f"{n}{o}" for n, o in TRUNK_CASES])
def test_compiled_trunk_trains_and_validates_like_eager(name, options, random_model):
    """`compile: trunk` (`compile_trunk`, inductor on the CPU): every family's training loss, every
    gradient and its validation as eager, the state_dict keys unchanged. In float64: in float32,
    inductor's reordered sums, through this random model's peaked logits (a loss of 35 nats), moved
    single gradients by up to 1e-4 relative. Measured in float64: AR 4e-13 (each gradient's error
    norm over its norm); Duo 1e-5, because its time features are float32 by design (the sinusoid
    of sigma, TimestepEmbedder), where inductor's cos/sin round differently from eager's."""
    from tests.trainers.test_fused_head import family_outputs
    from trainers.families.registry import get_entry

    model = random_model(get_entry(name).attention, vocab_size=24, mask_token_id=23).double()
    tokens = torch.randint(0, 23, (3, 10), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    keys = list(model.state_dict())
    want = family_outputs(name, options, model, tokens, t)
    kernels.compile_trunk(model)
    got = family_outputs(name, options, model, tokens, t)
    assert list(model.state_dict()) == keys
    if name == "ar":  # a copy of a compiled model computes with its own parameters
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin.vocab_embed.weight.mul_(2)
        assert not torch.allclose(twin(input_ids=tokens), model(input_ids=tokens))
    model.compiled_trunk = None
    for a, e in zip((got[0], *got[1], got[2]), (want[0], *want[1], want[2])):
        assert ((a - e).norm() / e.norm()).item() < 1e-4


@pytest.mark.parametrize("name", ["mdlm", "esolm"])
def test_the_trunk_compiles_once_whatever_rows_a_step_scores(name, random_model):
    """The whole model compiled recompiled at every step for MDLM and Eso-LM (their scored-row
    count changes; benchmarks/GPU_NOTES.md "Fourth lease"); the trunk's shapes are the
    micro-batch's, so steps with different masks and permutations reuse one graph."""
    from torch._dynamo.testing import CompileCounter

    from trainers.families import build_family
    from trainers.families.registry import get_entry

    torch._dynamo.reset()
    model = random_model(get_entry(name).attention, vocab_size=24, mask_token_id=23).train()
    family = build_family(name, {}, vocab_size=24, mask_token_id=23)
    counter = CompileCounter()
    model.compiled_trunk = torch.compile(type(model).trunk, backend=counter)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        tokens = torch.randint(0, 23, (3, 10), generator=g)
        t = torch.rand(3, generator=g) * 0.9 + 0.05
        family.training_loss(model, tokens, t, torch.Generator().manual_seed(step)).backward()
    assert counter.frame_count == 1


def _accumulated_gradients(model, name: str, device: str, n_micro: int = 3) -> list[torch.Tensor]:
    """Parameter gradients of family `name` summed over n_micro micro-batches, as the training loop
    takes them (a new iteration marked before each forward), from .grad = None."""
    from trainers.families import build_family

    family = build_family(name, {}, vocab_size=model.config.vocab_size,
                          mask_token_id=model.config.mask_token_id)
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(4)
    for micro in range(n_micro):
        tokens = torch.randint(0, model.config.mask_token_id, (4, 64), generator=g).to(device)
        t = (torch.rand(4, generator=g) * 0.9 + 0.05).to(device)
        kernels.begin_micro_batch()
        family.training_loss(model, tokens, t, torch.Generator(device).manual_seed(micro)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_a_cuda_graph_trunk_accumulates_gradients_like_eager(device, random_model):
    """`compile: trunk` with CUDA graphs (benchmarks: --cuda-graphs): the trunk's backward returns
    gradients in the graph's memory, which the next micro-batch's replay overwrites; the first
    micro-batch's must be copied out (kernels.keep_first_gradients), or the accumulated gradient is
    wrong (pytorch/pytorch#169545). On a CPU there are no CUDA graphs (reduce-overhead mode skips
    them), but the gradient-copying hooks run the same."""
    model = random_model("bidirectional", d_model=64, vocab_size=101, mask_token_id=100, std=0.1).to(device)
    want = _accumulated_gradients(model, "mdlm", device)
    try:
        kernels.configure("trunk", device, cuda_graphs=True)  # on CUDA: each micro-batch marked
        kernels.compile_trunk(model, cuda_graphs=True)
        got = _accumulated_gradients(model, "mdlm", device)
        got_again = _accumulated_gradients(model, "mdlm", device)  # replays, graphs recorded
    finally:
        kernels.configure(False, "cpu")
        model.compiled_trunk = None
    for a, b, e in zip(got, got_again, want):
        assert ((a - e).norm() / e.norm()).item() < 1e-4
        assert ((b - e).norm() / e.norm()).item() < 1e-4
