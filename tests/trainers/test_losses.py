"""Planted-truth checks of the losses on vocabularies small enough to enumerate.

K = 3 real tokens plus [MASK]; sequences of L = 2 or 3 tokens, so every sequence, every mask
pattern and every corrupted sequence can be listed, and the exact likelihood of a planted joint
distribution is known. The diffusion bounds are integrated over t by Gauss-Legendre quadrature
(composite over decades of t, because the Duo integrand has an integrable log t singularity at 0).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers import noise
from trainers.families import build_family
from trainers.families.duo import duo_nelbo_per_token
from trainers.families.mdlm import masked_cross_entropy
from trainers.validate import evaluate

K, MASK, V = 3, 3, 4  # real tokens 0..2, [MASK] = 3


def all_sequences(L: int, tokens=range(K)) -> torch.Tensor:
    return torch.tensor(list(itertools.product(tokens, repeat=L)))


def random_joint(L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(K ** L, generator=g, dtype=torch.float64), 0)


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.log()).sum())


def sample_blocks(seqs, p, n, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return seqs[torch.multinomial(p.float(), n, replacement=True, generator=g)]


def legendre(a: float, b: float, n: int = 24):
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((b - a) / 2 * x + (a + b) / 2), torch.tensor((b - a) / 2 * w)


def log_composite_legendre(a: float, b: float = 1.0, n: int = 24):
    """Nodes and weights on [a, 1] over decades [a, 10a], [10a, 100a], ...: exact enough for
    integrands with a log t singularity at 0."""
    edges = [a]
    while edges[-1] * 10 < b:
        edges.append(edges[-1] * 10)
    edges.append(b)
    parts = [legendre(lo, hi, n) for lo, hi in zip(edges[:-1], edges[1:])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class Planted(nn.Module):
    """A stand-in model: logits from a function of (input_ids, sigma); keyword-called like the backbone."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros(()))  # so evaluate() can find a device

    def forward(self, input_ids, sigma=None, permutation=None, output_rows=None, **kwargs):
        if sigma is None:
            sigma = torch.zeros(input_ids.shape[0])
        logits = self.fn(input_ids, sigma)
        return logits if output_rows is None else logits[output_rows]


# -- the noise schedule and time sampling -----------------------------------------------------------

def test_log_linear_schedule():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert float(noise.alpha(t)[0]) == 1.0 and math.isclose(float(noise.alpha(t)[-1]), noise.EPS)
    assert math.isclose(float(noise.alpha(torch.tensor(1.0, dtype=torch.float64), 0.5)), 0.5 * noise.EPS)
    h = 1e-6
    finite_diff = (noise.alpha(t[1:-1] + h, 0.7) - noise.alpha(t[1:-1] - h, 0.7)) / (2 * h)
    torch.testing.assert_close(finite_diff, noise.alpha_derivative(t[1:-1], 0.7))
    # the masked NELBO weight -alpha'/(1 - alpha) is exactly 1/t for alpha_0 = 1
    torch.testing.assert_close(noise.masked_nelbo_weight(t[1:]), 1 / t[1:])
    torch.testing.assert_close(noise.sigma_from_alpha(noise.alpha(t)), -torch.log(noise.alpha(t)))


def test_stratified_times_cover_every_stratum_and_ranks_agree():
    n = 16
    t = noise.sample_stratified_times(n, 0, n, torch.Generator().manual_seed(3))
    assert t.shape == (n,) and t.min() >= noise.T_MIN and t.max() <= 1.0
    strata = torch.floor((t - noise.T_MIN) / (1 - noise.T_MIN) * n).long()
    assert sorted(strata.tolist()) == list(range(n))  # one time per stratum
    slices = [noise.sample_stratified_times(n, start, 4, torch.Generator().manual_seed(3))
              for start in range(0, n, 4)]  # four ranks, same seed
    torch.testing.assert_close(torch.cat(slices), t)
    torch.testing.assert_close(noise.fixed_validation_times(8, 1), noise.fixed_validation_times(8, 1))
    assert not torch.equal(noise.fixed_validation_times(8, 1), noise.fixed_validation_times(8, 2))
    with pytest.raises(ValueError):
        noise.sample_stratified_times(8, 6, 4)


# -- AR: the exact likelihood --------------------------------------------------------------------

def test_ar_validation_is_the_exact_conditional_nll():
    L = 3
    seqs, p = all_sequences(L), random_joint(L, 0)

    def conditionals(prefix, sigma):  # p(x_{i+1} | x_{<=i}) at every prefix position i
        B, n = prefix.shape
        out = torch.full((B, n, V), -math.inf, dtype=torch.float64)
        for i in range(n):
            agree = (seqs[None, :, :i + 1] == prefix[:, None, :i + 1]).all(-1)  # [B, S]
            joint = torch.zeros(B, K, dtype=torch.float64).index_add_(1, seqs[:, i + 1], p * agree)
            out[:, i, :K] = (joint / joint.sum(1, keepdim=True)).log()
        return out.float()

    family = build_family("ar", {}, vocab_size=V, mask_token_id=MASK)
    nats, scored = family.validation_nats(Planted(conditionals), seqs, None)
    first = torch.zeros(K, dtype=torch.float64).index_add_(0, seqs[:, 0], p)
    exact = -(p.log() - first[seqs[:, 0]].log())  # -log p(x_2..x_L | x_1)
    assert scored == L - 1
    torch.testing.assert_close(nats.double(), exact, atol=1e-5, rtol=1e-5)


# -- MDLM: the NELBO against the exact likelihood ---------------------------------------------------

def oracle_masked(seqs, p):
    """The data distribution's exact p(x^l | unmasked tokens of x_t)."""
    onehot = F.one_hot(seqs, V).double()  # [S, L, V]

    def fn(x_t, sigma):
        visible = x_t != MASK
        agree = ((seqs[None] == x_t[:, None]) | ~visible[:, None]).all(-1)  # [B, S]
        marg = torch.einsum("bs,slv->blv", p * agree, onehot)
        return (marg / marg.sum(-1, keepdim=True)).log().float()
    return fn


def marginal_masked(seqs, p):
    """A worse denoiser: each position's marginal p(x^l), blind to the context."""
    marg = torch.einsum("s,slv->lv", p, F.one_hot(seqs, V).double()).log().float()
    return lambda x_t, sigma: marg.expand(x_t.shape[0], -1, -1)


class TableModel(nn.Module):
    """A learnable denoiser: one logit table per corrupted sequence (V^L of them)."""

    def __init__(self, L):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(V ** L, L, V))
        self.register_buffer("radix", V ** torch.arange(L))

    def forward(self, input_ids, sigma=None, permutation=None, output_rows=None, **kwargs):
        logits = self.table[(input_ids * self.radix).sum(-1)]
        return logits if output_rows is None else logits[output_rows]


def mask_pattern_weights(L: int, weighted: bool, ideal: bool = False) -> torch.Tensor:
    """E_{t ~ U[T_MIN, 1]}[w(t) (1 - alpha_t)^m alpha_t^(L - m)] for m = 0..L: what the Monte Carlo
    estimator averages for one pattern with m masks (w = 1/t for the NELBO, 1 for low_var).
    ideal: the untruncated continuous-time NELBO instead (t over (0, 1], alpha_t = 1 - t), whose
    weights are the Beta integrals int_0^1 t^(m-1) (1-t)^(L-m) dt = (m-1)! (L-m)! / L!."""
    if ideal:
        beta = [math.factorial(m - 1) * math.factorial(L - m) / math.factorial(L) for m in range(1, L + 1)]
        return torch.tensor([0.0] + beta, dtype=torch.float64)
    t, w = legendre(noise.T_MIN, 1.0, 32)  # polynomial integrands for m >= 1: exact
    a = noise.alpha(t)
    weight = noise.masked_nelbo_weight(t) if weighted else torch.ones_like(t)
    out = torch.stack([(w * weight * (1 - a) ** m * a ** (L - m)).sum() for m in range(L + 1)])
    out[0] = 0.0  # no masked token, nothing scored
    return out / (1 - noise.T_MIN)


@torch.no_grad()
def exact_mdlm_nats(model, seqs, p, weighted=True, ideal=False) -> torch.Tensor:
    """Expected nats per sequence, FloatTensor[S], enumerating all mask patterns."""
    S, L = seqs.shape
    patterns = torch.tensor(list(itertools.product([False, True], repeat=L)))  # [P, L]
    x0 = seqs[:, None].expand(S, len(patterns), L).reshape(-1, L)
    scored = patterns[None].expand(S, -1, -1).reshape(-1, L)
    logits = model(input_ids=torch.where(scored, MASK, x0), sigma=None)
    ce = masked_cross_entropy(logits, x0, scored, MASK).double().view(S, -1, L).sum(-1)
    return (ce * mask_pattern_weights(L, weighted, ideal)[patterns.sum(-1)]).sum(-1)


def test_mdlm_nelbo_is_tight_for_the_oracle_and_bounds_worse_models():
    """Continuous-time MDLM with the exact denoiser recovers the likelihood; any other denoiser
    pays. What the estimator targets leaves out t < 1e-3 and the alpha_1 = 1e-3 prior term, so the
    oracle may sit below the NLL by O(1e-3) per sequence, no more."""
    L = 3
    seqs, p = all_sequences(L), random_joint(L, 1)
    nll = entropy(p)
    oracle = Planted(oracle_masked(seqs, p))
    # untruncated, the oracle's bound is the NLL exactly (any-order AR over every order)
    assert abs(float((p * exact_mdlm_nats(oracle, seqs, p, ideal=True)).sum()) - nll) < 1e-6
    oracle_gap = float((p * exact_mdlm_nats(oracle, seqs, p)).sum()) - nll
    marginal_gap = float((p * exact_mdlm_nats(Planted(marginal_masked(seqs, p)), seqs, p)).sum()) - nll
    uniform_gap = float((p * exact_mdlm_nats(TableModel(L), seqs, p)).sum()) - nll
    assert abs(oracle_gap) < 3e-3 * nll, oracle_gap
    assert marginal_gap > 0.05 and uniform_gap > marginal_gap


def test_mdlm_bound_tightens_as_the_model_learns():
    L = 3
    seqs, p = all_sequences(L), random_joint(L, 2)
    nll = entropy(p)
    model = TableModel(L)
    family = build_family("mdlm", {"objective": "nelbo"}, vocab_size=V, mask_token_id=MASK)

    def gap():
        with torch.no_grad():
            return float((p * exact_mdlm_nats(model, seqs, p)).sum()) - nll

    gaps = [gap()]
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 201):
        tokens = sample_blocks(seqs, p, 128, seed=step)
        t = noise.sample_stratified_times(128, 0, 128, g)
        loss = family.training_loss(model, tokens, t, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            gaps.append(gap())
    assert gaps[0] > 0.5
    assert gaps[2] < gaps[1] < gaps[0]
    assert -3e-3 * nll < gaps[2] < 0.1 * gaps[0], gaps


def test_mdlm_monte_carlo_validation_matches_the_exact_expectation():
    """The family's estimator (fresh masks and times per draw) is unbiased for the enumerated NELBO."""
    L = 3
    seqs, p = all_sequences(L), random_joint(L, 3)
    model = Planted(marginal_masked(seqs, p))
    family = build_family("mdlm", {}, vocab_size=V, mask_token_id=MASK)
    blocks = sample_blocks(seqs, p, 512, seed=0)
    index = (blocks[:, None] == seqs[None]).all(-1).float().argmax(1)
    exact = float(exact_mdlm_nats(model, seqs, p)[index].mean()) / L

    reps = 16
    tokens = blocks.repeat(reps, 1)
    t = noise.fixed_validation_times(tokens.shape[0], 0)
    nats, scored = family.validation_nats(model, tokens, t, torch.Generator().manual_seed(0))
    per_token = nats.double() / scored
    stderr = float(per_token.std()) / math.sqrt(len(per_token))
    assert abs(float(per_token.mean()) - exact) < 4 * stderr
    result = evaluate(model, family, blocks, t_samples=reps, seed=0, batch_seqs=256)
    assert result.n_tokens_scored == 512 * L
    assert abs(result.nats_per_token - exact) < 4 * stderr


def test_low_var_is_the_nelbo_integrand_without_the_weight(random_model):
    model = random_model("bidirectional", vocab_size=24, mask_token_id=23)
    nelbo = build_family("mdlm", {"objective": "nelbo"}, vocab_size=24, mask_token_id=23)
    low_var = build_family("mdlm", {"objective": "low_var"}, vocab_size=24, mask_token_id=23)
    tokens = torch.randint(0, 23, (6, 10), generator=torch.Generator().manual_seed(0))
    t = noise.sample_stratified_times(6, 0, 6, torch.Generator().manual_seed(1))

    def gen():
        return torch.Generator().manual_seed(7)  # the same masks for every call

    with torch.no_grad():
        ce = low_var.masked_nats(model, tokens, t, gen())
        x_t_masked = ce != 0
        assert x_t_masked.any() and (ce >= 0).all()
        per_seq = ce.sum(1)
        torch.testing.assert_close(low_var.training_loss(model, tokens, t, gen()), per_seq.mean() / 10)
        torch.testing.assert_close(nelbo.training_loss(model, tokens, t, gen()), (per_seq / t).mean() / 10)
        for family in (nelbo, low_var):  # validation is the NELBO whatever the objective
            nats, scored = family.validation_nats(model, tokens, t, gen())
            torch.testing.assert_close(nats, per_seq / t)
            assert scored == 10


# -- Duo: the closed form against the discrete-time bound and the exact likelihood ---------------------

def duo_posterior(x: torch.Tensor, xt: int, a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """q(x_s | x_t, x_0 = x) for the uniform kernel, x: [T, K] (a one-hot or a model's x_theta)."""
    a_ts = a_t / a_s
    q_t_given_s = (1 - a_ts)[:, None] / K + a_ts[:, None] * F.one_hot(torch.tensor(xt), K)
    q_s = a_s[:, None] * x + (1 - a_s)[:, None] / K
    joint = q_t_given_s * q_s
    return joint / joint.sum(-1, keepdim=True)


def planted_x_theta(seed: int):
    """A smooth time-dependent denoiser over the real tokens: softmax(A[x_t] + t B[x_t])."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=g, dtype=torch.float64)
    B = torch.randn(K, K, generator=g, dtype=torch.float64)
    return lambda xt, t: torch.softmax(A[xt] + t[:, None] * B[xt], -1)


def duo_closed_form_integral(x_theta, x0: int) -> float:
    """int_0^1 E_{x_t ~ q(.|x0)} [closed-form integrand] dt for one token, by quadrature."""
    t, w = log_composite_legendre(1e-12)
    a = noise.alpha(t)
    total = torch.zeros((), dtype=torch.float64)
    for xt in range(K):
        q = a * (xt == x0) + (1 - a) / K
        log_x = F.pad(x_theta(xt, t).log(), (0, 1), value=-math.inf)[:, None]  # + the [MASK] column
        loss = duo_nelbo_per_token(log_x, torch.full((len(t), 1), xt), torch.full((len(t), 1), x0),
                                   a[:, None], noise.alpha_derivative(t)[:, None], K)[:, 0]
        total += (w * q * loss).sum()
    return float(total)


def duo_discrete_bound(x_theta, x0: int, T: int) -> float:
    """sum_{i=1..T} E_{x_{t_i}} KL(q(x_{t_{i-1}} | x_{t_i}, x0) || p_theta(x_{t_{i-1}} | x_{t_i})),
    t_i = i/T; the i = 1 term is the reconstruction -log p_theta(x0 | x_{t_1})."""
    ts = torch.arange(T + 1, dtype=torch.float64) / T
    t, s = ts[1:], ts[:-1]
    a_t, a_s = noise.alpha(t), noise.alpha(s)
    e0 = F.one_hot(torch.tensor(x0), K).double().expand(T, K)
    total = 0.0
    for xt in range(K):
        q_xt = a_t * (xt == x0) + (1 - a_t) / K
        q = duo_posterior(e0, xt, a_s, a_t)
        p = duo_posterior(x_theta(xt, t), xt, a_s, a_t)
        kl = torch.where(q > 0, q * (q.log() - p.log()), 0.0).sum(-1)
        total += float((q_xt * kl).sum())
    return total


def test_duo_closed_form_is_the_limit_of_the_discrete_time_bound():
    """The discrete bound with T steps converges to the closed form at rate O(1/T): its error at
    T = 4000 must be about a quarter of that at T = 1000, and small."""
    x_theta = planted_x_theta(0)
    for x0 in range(K):
        closed = duo_closed_form_integral(x_theta, x0)
        err_1k = duo_discrete_bound(x_theta, x0, 1000) - closed
        err_4k = duo_discrete_bound(x_theta, x0, 4000) - closed
        assert abs(err_1k) < 1e-3 and abs(err_4k) < 3e-4, (x0, closed, err_1k, err_4k)
        assert 2.5 < abs(err_1k / err_4k) < 6.0  # first-order convergence: the limit is the closed form
    # a perfect denoiser costs nothing
    perfect = lambda xt, t: F.one_hot(torch.full((len(t),), 1), K).double().clamp_min(1e-300)
    assert abs(duo_closed_form_integral(perfect, 1)) < 1e-9


def duo_exact_nelbo(seqs, p, denoiser) -> float:
    """E_x0 int_0^1 E_{x_t|x0} [sum_l closed form] dt, enumerating x_0 and x_t (uniform kernel)."""
    t, w = log_composite_legendre(1e-12)
    S, L = seqs.shape
    total = 0.0
    for ti, wi in zip(t, w):
        a = noise.alpha(ti)
        kernel = a * torch.eye(K, dtype=torch.float64) + (1 - a) / K  # q(x_t = j | x_0 = i)
        for xt in seqs:
            q_xt = torch.stack([kernel[seqs[:, l], xt[l]] for l in range(L)], 1).prod(1)  # [S]
            x_theta = denoiser(xt, kernel)  # [L, K]
            log_x = F.pad(x_theta.log(), (0, 1), value=-math.inf)[None].expand(S, L, V)
            loss = duo_nelbo_per_token(log_x, xt[None].expand(S, L), seqs, a.view(1, 1).expand(S, 1),
                                       torch.full((S, 1), -(1 - noise.EPS), dtype=torch.float64), K)
            total += float(wi * (p * q_xt * loss.sum(1)).sum())
    return total


def duo_denoiser(seqs, p, use_own_token: bool):
    """p(x_0^l | x_t^{-l}) (the exact reverse process of the mean parameterisation: the other
    tokens' noisy values, not x_t^l, which the posterior formula conditions on itself), or, as a
    worse denoiser, the full posterior E[x_0^l | x_t]."""
    S, L = seqs.shape

    def fn(xt, kernel):
        lik = torch.stack([kernel[seqs[:, l], xt[l]] for l in range(L)], 1)  # [S, L]
        out = []
        for l in range(L):
            weights = p * lik.prod(1) if use_own_token else p * (lik.prod(1) / lik[:, l])
            out.append(torch.zeros(K, dtype=torch.float64).index_add_(0, seqs[:, l], weights))
        out = torch.stack(out)
        return out / out.sum(-1, keepdim=True)
    return fn


def test_duo_nelbo_is_tight_for_the_exact_reverse_process():
    """With the exact reverse process the continuous-time bound equals the NLL (up to the omitted
    prior KL at alpha_1 = 1e-3, ~1e-6); a wrong denoiser is strictly above it."""
    L = 2
    seqs, p = all_sequences(L), random_joint(L, 4)
    nll = entropy(p)
    exact_gap = duo_exact_nelbo(seqs, p, duo_denoiser(seqs, p, use_own_token=False)) - nll
    wrong_gap = duo_exact_nelbo(seqs, p, duo_denoiser(seqs, p, use_own_token=True)) - nll
    assert abs(exact_gap) < 1e-4, exact_gap
    assert wrong_gap > 0.1, wrong_gap


def test_duo_family_estimate_matches_the_exact_expectation():
    """Through the family (uniform corruption over the real ids, [MASK] in the middle of the
    vocabulary and never drawn, sigma = -log alpha_t fed to the model): the Monte Carlo NELBO
    agrees with quadrature x enumeration for a planted sigma-dependent denoiser."""
    mask = 1
    real = torch.tensor([0, 2, 3])
    g = torch.Generator().manual_seed(5)
    A, B = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g)
    seen = []

    def logits(x_t, sigma):
        seen.append(x_t.clone())
        return A[x_t] + sigma[:, None, None] * B[x_t]

    family = build_family("duo", {}, vocab_size=V, mask_token_id=mask)
    x0 = torch.tensor([0, 3])
    n = 400_000  # the per-sequence spread is wide (rare x_t != x_0 at small t): ~1% standard error
    t = noise.fixed_validation_times(n, 0)
    with torch.no_grad():
        nats, scored = family.validation_nats(Planted(logits), x0.expand(n, 2), t,
                                              torch.Generator().manual_seed(0))
    x_t = torch.cat(seen)
    assert (x_t != mask).all() and set(x_t.unique().tolist()) == set(real.tolist())
    mc, stderr = float(nats.mean()), float(nats.std()) / math.sqrt(n)

    tq, wq = log_composite_legendre(noise.T_MIN)
    a = noise.alpha(tq.float())
    sigma = noise.sigma_from_alpha(a)
    exact = 0.0
    for l in range(2):
        for xt in real.tolist():
            q = a * (xt == int(x0[l])) + (1 - a) / K
            log_x = torch.log_softmax((A[xt] + sigma[:, None] * B[xt]).index_fill(-1, torch.tensor(mask),
                                                                                 -math.inf), -1)
            loss = duo_nelbo_per_token(log_x[:, None], torch.full((len(a), 1), xt),
                                       torch.full((len(a), 1), int(x0[l])), a[:, None],
                                       noise.alpha_derivative(a)[:, None], K)[:, 0]
            exact += float((wq * q.double() * loss.double()).sum()) / (1 - noise.T_MIN)
    assert scored == 2
    assert abs(mc - exact) < 4 * stderr, (mc, exact, stderr)
