"""Samplers of every registry family: shapes, seeds, no [MASK] left, cache on == cache off, and each
sampler's own math (the Duo posterior against Bayes' rule, the Eso-LM cached query against the
training forward, MDLM on a model that knows the answer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.backbone import build_model
from trainers.families import build_family
from trainers.families.registry import FAMILIES, get_entry
from trainers.samplers import cache_modes, common, esolm
from trainers.samplers.duo import duo_posterior

V, MASK, BOS, L = 40, 1, 0, 12
NAMES = list(FAMILIES)


def perturbed_model(name: str, seed: int = 0) -> nn.Module:
    """A tiny backbone whose zero-initialised adaLN and head are perturbed (a fresh one predicts
    uniformly), in float64 so cache on/off comparisons cannot flip on a rounding tie."""
    torch.manual_seed(seed)
    model = build_model(2, 32, 2, V, attention=get_entry(name).attention, mask_token_id=MASK)
    for module in model.modules():
        if getattr(module, "zero_init", False):
            module.weight.data.normal_(0.0, 0.1)
    return model.double().eval()


def family(name: str, **options):
    return build_family(name, options, vocab_size=V, mask_token_id=MASK)


def draw(name, model, seed, n_steps=6, **kwargs):
    return family(name).sample(model, 3, L, n_steps, torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_shape_seed_and_no_mask(name):
    model = perturbed_model(name)
    for use_cache in cache_modes(name):
        x = draw(name, model, 1, use_cache=use_cache)
        assert x.shape == (3, L) and x.dtype == torch.long
        assert not (x == MASK).any() and x.min() >= 0 and x.max() < V
        assert torch.equal(x, draw(name, model, 1, use_cache=use_cache))  # same seed, same samples
        assert not torch.equal(x, draw(name, model, 2, use_cache=use_cache))
    prompted = draw(name, model, 1, bos_token_id=BOS, top_p=0.9)
    assert (prompted[:, 0] == BOS).all() and not (prompted == MASK).any()


@pytest.mark.parametrize("name", ["ar", "mdlm", "esolm"])
def test_cache_on_equals_cache_off(name):
    model = perturbed_model(name, seed=3)
    for kwargs in ({}, {"bos_token_id": BOS, "top_p": 0.8}):
        on = draw(name, model, 5, n_steps=5, use_cache=True, **kwargs)
        off = draw(name, model, 5, n_steps=5, use_cache=False, **kwargs)
        assert torch.equal(on, off)


def test_esolm_cache_on_equals_off_with_a_left_to_right_phase():
    model = perturbed_model("esolm", seed=4)
    on = draw("esolm", model, 7, n_steps=3, use_cache=True, alpha_0=0.5)
    off = draw("esolm", model, 7, n_steps=3, use_cache=False, alpha_0=0.5)
    assert torch.equal(on, off) and not (on == MASK).any()


def test_esolm_cached_query_is_the_training_forward():
    """Logits of the [MASK] queries through the cache, call after call, equal the full forward under
    the clean-first permutation the Eso-LM loss uses."""
    model = perturbed_model("esolm", seed=5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, V, (3, L), generator=g)
    order = torch.stack([torch.randperm(L, generator=g) for _ in range(3)])
    decoder = esolm._Decoder(model, MASK, L, use_cache=True)
    n_clean = 0
    with torch.no_grad():
        for size in (3, 2, 4, 1, 2):
            queries = order[:, n_clean:n_clean + size]
            got = decoder.query(x, order, n_clean, queries)
            masked = torch.ones_like(x, dtype=torch.bool).scatter(1, order[:, :n_clean], False)
            full = model(input_ids=torch.where(masked, MASK, x), permutation=order)
            want = full.gather(1, queries[..., None].expand(-1, -1, V))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
            n_clean += size


def test_esolm_reveal_schedule():
    g = torch.Generator().manual_seed(0)
    assert sum(esolm.reveal_counts(50, 8, 1.0, g, "cpu")) == 50  # alpha_0 = 1: s = 0 reveals all
    partial = [sum(esolm.reveal_counts(200, 8, 0.25, g, "cpu")) for _ in range(20)]
    assert 30 < sum(partial) / len(partial) < 70  # about alpha_0 of the tokens by diffusion
    order = esolm.generation_order(4, 10, 1, 5, g, "cpu")
    assert (order[:, 0] == 0).all()
    assert (order.sort(dim=1).values == torch.arange(10)).all()
    assert (order[:, 6:].diff(dim=1) > 0).all()  # the left-to-right tail


def test_duo_posterior_sums_to_one():
    g = torch.Generator().manual_seed(0)
    B, n = 64, 7
    logits = torch.randn(B, n, V, generator=g, dtype=torch.float64) * 3
    logits[..., MASK] = float("-inf")
    x_theta = logits.softmax(-1)
    xt = common.uniform_real_tokens((B, n), V, MASK, g, "cpu")
    alpha_t = torch.rand(B, 1, 1, generator=g, dtype=torch.float64) * 0.99 + 1e-3
    alpha_s = alpha_t + (1 - alpha_t) * torch.rand(B, 1, 1, generator=g, dtype=torch.float64)
    q = duo_posterior(x_theta, xt, alpha_s, alpha_t, MASK)
    torch.testing.assert_close(q.sum(-1), torch.ones(B, n, dtype=torch.float64))
    assert (q >= 0).all() and (q[..., MASK] == 0).all()


def test_duo_posterior_is_bayes_rule_for_a_clean_x0():
    """x_theta = e_{x0}: the posterior is q(x_t | x_s) q(x_s | x0) / q(x_t | x0) of the uniform chain."""
    K = V - 1
    real = torch.tensor([i for i in range(V) if i != MASK])
    alpha_s, alpha_t = 0.7, 0.3
    alpha_ts = alpha_t / alpha_s
    for x0, xt in ((5, 5), (5, 9), (0, 39)):
        uniform = torch.zeros(V, dtype=torch.float64)
        uniform[real] = 1.0 / K
        q_s_given_0 = alpha_s * torch.nn.functional.one_hot(torch.tensor(x0), V) + (1 - alpha_s) * uniform
        q_t_given_s = alpha_ts * torch.nn.functional.one_hot(torch.tensor(xt), V) + (1 - alpha_ts) / K
        joint = q_t_given_s * q_s_given_0
        want = joint / joint.sum()
        x_theta = torch.nn.functional.one_hot(torch.tensor([[x0]]), V).double()
        got = duo_posterior(x_theta, torch.tensor([[xt]]), alpha_s, alpha_t, MASK)[0, 0]
        torch.testing.assert_close(got, want)


def test_duo_final_step_options():
    model = perturbed_model("duo")
    greedy = draw("duo", model, 1, final_step="greedy")
    assert not (greedy == MASK).any()
    with pytest.raises(ValueError, match="final_step"):
        draw("duo", model, 1, final_step="argmax")


class Oracle(nn.Module):
    """Knows the target sequence: puts almost all mass on it at every position; counts its calls."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target
        self.calls = 0

    def forward(self, input_ids, sigma=None, **kwargs):
        self.calls += 1
        return torch.nn.functional.one_hot(self.target, V).double() * 30.0


def test_mdlm_with_a_perfect_model():
    target = torch.randint(2, V, (4, L), generator=torch.Generator().manual_seed(0))
    mdlm = family("mdlm")
    oracle = Oracle(target)
    x = mdlm.sample(oracle, 4, L, L, torch.Generator().manual_seed(1))
    assert torch.equal(x, target)
    assert 1 <= oracle.calls <= L + 1
    # many more steps than tokens: reusing the prediction keeps the calls of one sequence at most
    # L + 1 (a token changes at most L times), while no reuse calls the model at every step
    cached, uncached = Oracle(target[:1]), Oracle(target[:1])
    x_cached = mdlm.sample(cached, 1, L, 8 * L, torch.Generator().manual_seed(2), use_cache=True)
    x_uncached = mdlm.sample(uncached, 1, L, 8 * L, torch.Generator().manual_seed(2), use_cache=False)
    assert torch.equal(x_cached, target[:1]) and torch.equal(x_uncached, target[:1])
    assert cached.calls <= L + 1 < 8 * L <= uncached.calls


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    log_p = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = common.nucleus(log_p, 0.75).exp()
    torch.testing.assert_close(kept, torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8)
    torch.testing.assert_close(common.nucleus(log_p, 0.1).exp(), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(common.nucleus(log_p, 1.0), log_p)


def test_gumbel_argmax_follows_the_distribution():
    p = torch.tensor([0.6, 0.3, 0.1, 0.0])
    draws = common.gumbel_argmax(p.log().expand(20000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(freq, p.double(), atol=0.015, rtol=0)
