"""The DiT backbone: exact parameter count, attention patterns, KV cache, save/load round trip."""

from __future__ import annotations

import csv

import pytest
import torch

from scaling.flops import count_params
from trainers.backbone import DiTConfig, DiTModel, KVCache, build_model


@pytest.mark.parametrize("n_layers,d_model,n_heads,vocab", [
    (1, 16, 1, 7), (2, 32, 2, 64), (3, 48, 4, 101), (4, 64, 8, 33)])
def test_param_count_matches_flops_module(n_layers, d_model, n_heads, vocab):
    model = build_model(n_layers, d_model, n_heads, vocab)
    assert sum(p.numel() for p in model.parameters()) == count_params(n_layers, d_model, vocab)


def test_param_count_paper_shapes_on_meta(repo):
    """Paper ladder shapes at K = 32001 (TinyLlama + [MASK]), built on the meta device."""
    with open(repo / "scaling" / "data" / "paper_ladder.csv") as f:
        shapes = [(int(r["n_layers"]), int(r["d_model"]), int(r["n_heads"])) for r in csv.DictReader(f)]
    shapes.append((18, 1280, 20))
    for n_layers, d_model, n_heads in shapes:
        with torch.device("meta"):
            model = build_model(n_layers, d_model, n_heads, 32001, "bidirectional", 32000)
        assert sum(p.numel() for p in model.parameters()) == count_params(n_layers, d_model, 32001)


def test_fresh_model_is_adaln_zero():
    """MDLM's init: zero adaLN projections and zero head, so every block is the identity and a fresh
    model predicts uniformly."""
    model = build_model(2, 32, 2, 24)
    logits = model(input_ids=torch.randint(0, 24, (2, 5)), sigma=torch.rand(2))
    assert torch.count_nonzero(logits) == 0
    assert all(torch.count_nonzero(b.adaLN_modulation.weight) == 0 for b in model.blocks)


def test_config_validation():
    with pytest.raises(Exception, match="divisible"):
        DiTConfig(d_model=30, n_heads=4)
    with pytest.raises(Exception, match="attention"):
        DiTConfig(attention="sideways")
    with pytest.raises(Exception, match="mask_token_id"):
        DiTConfig(vocab_size=10, mask_token_id=10)


def test_sigma_conditions_and_none_means_zero(random_model):
    model = random_model()
    x = torch.randint(0, 23, (2, 6))
    base = model(input_ids=x, sigma=None)
    torch.testing.assert_close(base, model(input_ids=x, sigma=torch.zeros(2)))
    assert not torch.allclose(base, model(input_ids=x, sigma=torch.full((2,), 2.0)))


def test_causal_and_bidirectional_masks(random_model):
    x = torch.randint(0, 23, (2, 8))
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 23
    causal = random_model("causal")
    a, b = causal(input_ids=x), causal(input_ids=y)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # earlier positions never see the change
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    bidir = random_model("bidirectional")
    assert not torch.allclose(bidir(input_ids=x)[:, :5], bidir(input_ids=y)[:, :5])
    # per-call override of the configured mode
    torch.testing.assert_close(bidir(input_ids=x, attention="causal")[:, :5],
                               bidir(input_ids=y, attention="causal")[:, :5])


def test_permuted_causal_equals_explicit_order(random_model):
    """Permuted tokens + their original rotary positions + causal mask, logits un-permuted."""
    model = random_model("permuted_causal")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 23, (3, 7), generator=g)
    perm = torch.stack([torch.randperm(7, generator=g) for _ in range(3)])
    got = model(input_ids=x, permutation=perm)
    explicit = model(input_ids=x.gather(1, perm), position_ids=perm, attention="causal")
    expected = torch.empty_like(explicit).scatter_(1, perm[..., None].expand_as(explicit), explicit)
    torch.testing.assert_close(got, expected)
    # identity permutation == plain causal
    ident = torch.arange(7).expand(3, 7)
    torch.testing.assert_close(model(input_ids=x, permutation=ident), model(input_ids=x, attention="causal"))


def test_permuted_causal_respects_the_order(random_model):
    model = random_model("permuted_causal")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 23, (1, 8), generator=g)
    perm = torch.randperm(8, generator=g)[None]
    j = 4  # change the token read 5th: only positions read at or after it may change
    y = x.clone()
    y[0, perm[0, j]] = (y[0, perm[0, j]] + 1) % 23
    a, b = model(input_ids=x, permutation=perm), model(input_ids=y, permutation=perm)
    before, after = perm[0, :j], perm[0, j:]
    torch.testing.assert_close(a[0, before], b[0, before])
    assert not torch.allclose(a[0, after], b[0, after])
    with pytest.raises(ValueError, match="permuted_causal"):
        model(input_ids=x, permutation=perm, attention="bidirectional")


def test_kv_cache_token_by_token_equals_full_causal(random_model):
    model = random_model("causal").double()  # float64: the comparisons are exact up to rounding
    x = torch.randint(0, 23, (2, 9))
    full = model(input_ids=x, sigma=None)
    cache = KVCache(max_length=9)
    steps = [model(input_ids=x[:, i:i + 1], kv_cache=cache) for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=1e-9)
    assert cache.length == 9
    # chunks of several tokens at once
    cache = KVCache(max_length=9)
    chunks = [model(input_ids=x[:, a:b], kv_cache=cache) for a, b in ((0, 4), (4, 5), (5, 9))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-9, rtol=1e-9)
    # a cache sized too small grows on demand
    cache = KVCache(max_length=2)
    grown = [model(input_ids=x[:, i:i + 1], kv_cache=cache) for i in range(9)]
    torch.testing.assert_close(torch.cat(grown, dim=1), full, atol=1e-9, rtol=1e-9)


def test_kv_cache_permuted_order_and_partial_commit(random_model):
    """Decode in a permuted order with position_ids == permuted_causal forward; uncommitted
    queries (Eso-LM's [MASK] slots) leave no trace in the cache."""
    model = random_model("permuted_causal").double()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 23, (2, 8), generator=g)
    perm = torch.stack([torch.randperm(8, generator=g) for _ in range(2)])
    full = model(input_ids=x, permutation=perm)
    xs = x.gather(1, perm)
    cache = KVCache(max_length=8)
    got = []
    for a, b in ((0, 3), (3, 4), (4, 8)):
        # a probe query appended and not committed must not change anything
        probe = torch.full((2, 1), 23)
        ids = torch.cat([xs[:, a:b], probe], dim=1)
        pos = torch.cat([perm[:, a:b], perm[:, b - 1:b]], dim=1)
        out = model(input_ids=ids, position_ids=pos, kv_cache=cache, cache_commit=b - a)
        got.append(out[:, :b - a])
    assert cache.length == 8
    expected = full.gather(1, perm[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(torch.cat(got, dim=1), expected, atol=1e-9, rtol=1e-9)


def test_kv_cache_refuses_bidirectional(random_model):
    with pytest.raises(ValueError, match="causal"):
        random_model("bidirectional")(input_ids=torch.zeros(1, 2, dtype=torch.long), kv_cache=KVCache(4))


def test_save_load_round_trip(tmp_path, random_model):
    model = random_model("permuted_causal")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = DiTModel.from_pretrained(tmp_path).eval()
    assert loaded.config.attention == "permuted_causal" and loaded.config.mask_token_id == 23
    x = torch.randint(0, 23, (2, 6))
    sigma = torch.rand(2)
    perm = torch.stack([torch.randperm(6) for _ in range(2)])
    torch.testing.assert_close(loaded(input_ids=x, sigma=sigma, permutation=perm),
                               model(input_ids=x, sigma=sigma, permutation=perm), rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["bidirectional", "permuted_causal"])
def test_output_rows_are_the_full_logits_at_those_rows(random_model, attention):
    """The head on selected positions only (what SUBS losses ask for) changes no number."""
    model = random_model(attention)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 23, (3, 9), generator=g)
    rows = torch.rand(3, 9, generator=g) < 0.5
    perm = torch.stack([torch.randperm(9, generator=g) for _ in range(3)]) \
        if attention == "permuted_causal" else None
    sigma = torch.rand(3, generator=g)
    some = model(input_ids=x, sigma=sigma, permutation=perm, output_rows=rows)
    assert some.shape == (int(rows.sum()), 24)
    torch.testing.assert_close(some, model(input_ids=x, sigma=sigma, permutation=perm)[rows])


def test_padded_head_matmul_is_the_same_linear():
    """The GPU head pads the vocabulary to a multiple of 64 for aligned kernels: same values,
    same gradients, on the unpadded parameters."""
    from trainers.backbone import padded_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    bias = torch.randn(101, generator=g, requires_grad=True)
    padded = padded_linear(x, weight, bias, 64)
    assert padded.shape == (5, 7, 101)
    reference = torch.nn.functional.linear(x, weight, bias)
    torch.testing.assert_close(padded, reference)
    upstream = torch.randn(5, 7, 101, generator=g)
    grads = torch.autograd.grad((padded * upstream).sum(), (x, weight, bias))
    expected = torch.autograd.grad((reference * upstream).sum(), (x, weight, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
