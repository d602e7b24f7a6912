"""Every registry family: wiring, options, a training pulse, and each family's own contract
(SUBS for MDLM, the clean-first order and the sequential term for Eso-LM, deterministic validation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import noise
from trainers.backbone import build_model
from trainers.families import build_family
from trainers.families.base import Family
from trainers.families.esolm import clean_first_permutation, sequential_attention_mask
from trainers.families.mdlm import mask_tokens
from trainers.families.registry import FAMILIES, get_entry
from trainers.validate import evaluate

V, MASK, L = 32, 31, 16
NAMES = list(FAMILIES)


def synthetic_blocks(n: int, seed: int) -> torch.Tensor:
    """Repetitive sequences: a random start, then +1 mod 8 (offset 3, clear of [MASK])."""
    start = torch.randint(0, 8, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(L)) % 8 + 3


class PositionWise(nn.Module):
    """A planted model blind to attention order: logits depend on each position's own token only.
    It records the permutations it is given."""

    def __init__(self, seed=0):
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, L, V, generator=torch.Generator().manual_seed(seed)))
        self.permutations = []

    def forward(self, input_ids, sigma=None, permutation=None, position_ids=None, output_rows=None,
                **kwargs):
        self.permutations.append(permutation)
        positions = torch.arange(input_ids.shape[1]) if position_ids is None else position_ids
        logits = self.table[input_ids, positions]
        return logits if output_rows is None else logits[output_rows]


@pytest.mark.parametrize("name", NAMES)
def test_registry_builds_every_family(name):
    entry = get_entry(name)
    family = build_family(name, {}, vocab_size=V, mask_token_id=MASK)
    assert isinstance(family, Family) and family.name == name
    assert family.attention == entry.attention
    assert family.needs_time == (name != "ar")
    assert type(entry.load().build({}, vocab_size=V, mask_token_id=MASK)) is type(family)  # dicts too
    with pytest.raises(Exception, match="extra|not permitted"):
        build_family(name, {"no_such_option": 1}, vocab_size=V, mask_token_id=MASK)
    assert callable(family.sample)  # samplers: tests/trainers/test_samplers.py


def test_bad_options_fail_at_build():
    with pytest.raises(Exception, match="objective"):
        build_family("mdlm", {"objective": "elbo"}, vocab_size=V, mask_token_id=MASK)
    with pytest.raises(Exception, match="alpha_0"):
        build_family("esolm", {"alpha_0": 0.0}, vocab_size=V, mask_token_id=MASK)
    with pytest.raises(NotImplementedError, match="curriculum"):
        build_family("duo", {"curriculum": True}, vocab_size=V, mask_token_id=MASK)
    with pytest.raises(KeyError, match="unknown family"):
        build_family("gpt", {}, vocab_size=V, mask_token_id=MASK)


@pytest.mark.parametrize("name", NAMES)
def test_training_has_a_pulse(name):
    """2 layers, width 32, 30 AdamW steps on repetitive data: the validation loss falls well."""
    torch.manual_seed(0)
    family = build_family(name, {}, vocab_size=V, mask_token_id=MASK)
    model = build_model(2, 32, 2, V, get_entry(name).attention, MASK)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    val = synthetic_blocks(16, seed=99)
    before = evaluate(model, family, val, t_samples=2, seed=0, batch_seqs=16).nats_per_token
    g = torch.Generator().manual_seed(0)
    for step in range(30):
        tokens = synthetic_blocks(16, seed=step)
        t = noise.sample_stratified_times(16, 0, 16, g)
        loss = family.training_loss(model, tokens, t, g)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate(model, family, val, t_samples=2, seed=0, batch_seqs=16).nats_per_token
    assert after < 0.75 * before, (before, after)


def test_mdlm_subs_scores_masked_positions_only():
    family = build_family("mdlm", {}, vocab_size=V, mask_token_id=MASK)
    model = PositionWise()
    tokens = synthetic_blocks(4, seed=0)
    t = torch.full((4,), 0.5)
    nats = family.masked_nats(model, tokens, t, torch.Generator().manual_seed(3))
    _, masked = mask_tokens(tokens, noise.alpha(t), MASK, torch.Generator().manual_seed(3))
    assert masked.any() and (~masked).any()
    assert (nats[~masked] == 0).all() and (nats[masked] > 0).all()
    # the [MASK] logit never counts: making it huge changes nothing
    with torch.no_grad():
        model.table[..., MASK] += 100.0
    torch.testing.assert_close(family.masked_nats(model, tokens, t, torch.Generator().manual_seed(3)), nats)


def test_esolm_equals_mdlm_for_an_order_blind_model():
    """alpha_0 = 1: the same masks (drawn first from the same generator), the same per-token
    cross-entropy; only the attention order differs, which this model ignores."""
    mdlm = build_family("mdlm", {"objective": "low_var"}, vocab_size=V, mask_token_id=MASK)
    esolm = build_family("esolm", {}, vocab_size=V, mask_token_id=MASK)
    model = PositionWise()
    tokens = synthetic_blocks(8, seed=1)
    t = noise.sample_stratified_times(8, 0, 8, torch.Generator().manual_seed(0))

    def gen():
        return torch.Generator().manual_seed(11)

    torch.testing.assert_close(esolm.training_loss(model, tokens, t, gen()),
                               mdlm.training_loss(model, tokens, t, gen()))
    for a, b in zip(mdlm.validation_nats(model, tokens, t, gen()), esolm.validation_nats(model, tokens, t, gen())):
        torch.testing.assert_close(a, b)
    # the order Eso-LM gave (its call was the last): clean positions first, then the masked ones
    _, masked = mask_tokens(tokens, noise.alpha(t), MASK, gen())
    permutation = model.permutations[-1]
    assert permutation is not None
    for row, perm in zip(masked, permutation):
        assert sorted(perm.tolist()) == list(range(L))
        n_clean = int((~row).sum())
        assert not row[perm[:n_clean]].any() and row[perm[n_clean:]].all()


def test_clean_first_permutation_orders():
    masked = torch.rand(64, 20, generator=torch.Generator().manual_seed(0)) < 0.5
    g = torch.Generator().manual_seed(1)
    random_order = clean_first_permutation(masked, g)
    in_order = clean_first_permutation(masked, g, masked_in_order=True)
    for row, a, b in zip(masked, random_order, in_order):
        n_clean = int((~row).sum())
        for perm in (a, b):
            assert not row[perm[:n_clean]].any() and row[perm[n_clean:]].all()
        assert torch.equal(b[n_clean:], b[n_clean:].sort().values)  # masked left to right
    assert any(not torch.equal(a[(~r).sum():], a[(~r).sum():].sort().values)
               for r, a in zip(masked, random_order))


def test_esolm_masked_tokens_see_every_clean_token(random_model):
    """Under the clean-first causal order every masked position attends to every clean one."""
    # small weights: a saturated attention softmax could hide a token it does attend to
    model = random_model("permuted_causal", vocab_size=V, mask_token_id=MASK, std=0.05).double()
    family = build_family("esolm", {}, vocab_size=V, mask_token_id=MASK)
    tokens = synthetic_blocks(1, seed=2)
    t = torch.tensor([0.5])
    _, masked = mask_tokens(tokens, noise.alpha(t), MASK, torch.Generator().manual_seed(5))
    clean = (~masked[0]).nonzero().flatten()
    with torch.no_grad():
        base = family.diffusion_nats(model, tokens, t, torch.Generator().manual_seed(5))
        for pos in clean.tolist():
            changed = tokens.clone()
            changed[0, pos] = (changed[0, pos] - 3 + 1) % 8 + 3
            other = family.diffusion_nats(model, changed, t, torch.Generator().manual_seed(5))
            assert (other[masked] != base[masked]).all()


def test_esolm_sequential_term_never_sees_its_own_target(random_model):
    """alpha_0 < 1: the AR term at a scored slot is a distribution that ignores the token it scores
    (summing exp(-nats) over every value of that token gives 1), and earlier slots ignore it too."""
    model = random_model("permuted_causal", vocab_size=V, mask_token_id=MASK).double()
    family = build_family("esolm", {"alpha_0": 0.5}, vocab_size=V, mask_token_id=MASK)
    tokens = synthetic_blocks(1, seed=3)

    def nats_for(x):
        with torch.no_grad():
            return family.sequential_nats(model, x, torch.Generator().manual_seed(4))[0]

    base = nats_for(tokens)
    g = torch.Generator().manual_seed(4)
    z0, masked = mask_tokens(tokens, torch.full((1,), 0.5), MASK, g)
    perm = clean_first_permutation(masked, g, masked_in_order=True)[0]
    scored_slots = masked[0, perm].nonzero().flatten()
    assert len(scored_slots) >= 2 and torch.equal(base != 0, masked[0, perm])
    slot = int(scored_slots[len(scored_slots) // 2])
    total_prob = 0.0
    for value in range(V):
        if value == MASK:
            continue
        x = tokens.clone()
        x[0, perm[slot]] = value
        nats = nats_for(x)
        total_prob += float(torch.exp(-nats[slot]))
        torch.testing.assert_close(nats[:slot], base[:slot])  # earlier slots never see it
    assert abs(total_prob - 1.0) < 1e-6  # the families take log-probabilities in float32


def test_sequential_attention_mask_shape():
    m = sequential_attention_mask(3, "cpu").int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [0, 1, 0, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 1, 1, 1]])
    assert torch.equal(m, expected)


def test_esolm_partial_alpha0_validation_adds_both_terms():
    family = build_family("esolm", {"alpha_0": 0.5}, vocab_size=V, mask_token_id=MASK)
    model = PositionWise()
    tokens = synthetic_blocks(4, seed=4)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    g = torch.Generator().manual_seed(6)
    diffusion = family.diffusion_nats(model, tokens, t, g).sum(1)
    sequential = family.sequential_nats(model, tokens, g).sum(1)
    nats, scored = family.validation_nats(model, tokens, t, torch.Generator().manual_seed(6))
    torch.testing.assert_close(nats, diffusion * noise.masked_nelbo_weight(t, 0.5) + sequential)
    assert scored == L
    loss = family.training_loss(model, tokens, t, torch.Generator().manual_seed(6))
    torch.testing.assert_close(loss, (diffusion + sequential).mean() / L)


@pytest.mark.parametrize("name", ["ar", "duo"])
def test_evaluate_is_deterministic_and_restores_mode(name, random_model):
    family = build_family(name, {}, vocab_size=V, mask_token_id=MASK)
    model = random_model(get_entry(name).attention, vocab_size=V, mask_token_id=MASK).train()
    val = synthetic_blocks(10, seed=5)
    first = evaluate(model, family, val, t_samples=3, seed=1, batch_seqs=4)
    assert model.training
    assert first == evaluate(model, family, val, t_samples=3, seed=1, batch_seqs=4)
    if name == "ar":  # exact NLL: no time draws, L - 1 tokens per sequence
        assert first.n_tokens_scored == 10 * (L - 1)
        other = evaluate(model, family, val, t_samples=1, seed=7, batch_seqs=10)
        assert other.nats_per_token == pytest.approx(first.nats_per_token, rel=1e-6)
    else:
        assert first.n_tokens_scored == 10 * L
        assert first != evaluate(model, family, val, t_samples=3, seed=2, batch_seqs=4)
    with pytest.raises(ValueError):
        evaluate(model, family, val[:0], t_samples=1, seed=0, batch_seqs=4)


@pytest.mark.parametrize("name,options", [("mdlm", {"objective": "nelbo"}), ("esolm", {"alpha_0": 0.5})])
def test_scored_rows_loss_equals_the_full_logits_loss(random_model, name, options):
    """MDLM and Eso-LM run the head only where a token is scored; against the plain computation
    (full logits, then the masked cross-entropy) the loss and its gradients are the same."""
    from trainers.families import mdlm as mdlm_module

    family = build_family(name, options, vocab_size=24, mask_token_id=23)
    model = random_model(get_entry(name).attention).train()
    tokens = torch.randint(0, 23, (6, 10), generator=torch.Generator().manual_seed(0))
    t = torch.rand(6, generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad()
        loss = family.training_loss(model, tokens, t, torch.Generator().manual_seed(2))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast = loss_and_grads()

    def full_logits(model, targets, scored, mask_token_id, **inputs):
        return mdlm_module.masked_cross_entropy(model(**inputs), targets, scored, mask_token_id)

    original = mdlm_module.scored_cross_entropy
    try:  # the families look the helper up at call time through their module's globals
        import trainers.families.esolm as esolm_module
        mdlm_module.scored_cross_entropy = esolm_module.scored_cross_entropy = full_logits
        plain = loss_and_grads()
    finally:
        mdlm_module.scored_cross_entropy = esolm_module.scored_cross_entropy = original
    torch.testing.assert_close(fast[0], plain[0])
    for a, b in zip(fast[1], plain[1]):
        torch.testing.assert_close(a, b)
