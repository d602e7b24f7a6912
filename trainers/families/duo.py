"""Duo: uniform-state diffusion (Sahoo et al. 2025, after UDLM; REFERENCE §1).

Corruption: with probability 1 - alpha_t a token is replaced by a uniformly random token. The
uniform law is over the K = vocab_size - 1 real tokens: [MASK] is excluded, because a
uniform-state model has no use for an absorbing symbol and the data never contains it; the model's
[MASK] logit is forced to -inf, so x_theta lives on the same K tokens. (The Duo code, on GPT-2's
vocabulary, has no [MASK] in its vocabulary at all: the same K.)

Bidirectional attention, time-conditioned on sigma = -log alpha_t. The loss, for training and
validation alike, is the closed-form continuous-time NELBO of UDLM/Duo (`duo_nelbo_per_token`,
transcribed from the Duo code's `nll_per_token`); tests/trainers/test_losses.py checks it against a
brute-force discretisation of the discrete-time bound and against the exact likelihood.

The Duo paper's Gaussian-relaxation curriculum is not implemented (the scaling study trains
without it): `curriculum: true` fails at build time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers import kernels, noise
from trainers.families.base import Family
from trainers.families.registry import DuoOptions, get_entry
from trainers.fused_head import HeadOutput, RowLoss, RowStats
from trainers.samplers import duo as sampler

ENTRY = get_entry("duo")


def uniform_corrupt(tokens: torch.Tensor, alpha_t: torch.Tensor, mask_token_id: int, n_real: int,
                    generator: torch.Generator | None) -> torch.Tensor:
    """x_t: each token replaced w.p. 1 - alpha_t ([B]) by a uniform draw over the ids != [MASK]."""
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    draw = torch.randint(0, n_real, tokens.shape, generator=generator, device=tokens.device)
    draw = draw + (draw >= mask_token_id).long()  # skip the [MASK] id
    return torch.where(u < (1.0 - alpha_t)[:, None], draw, tokens)


def duo_nelbo_per_token(log_x_theta: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                        alpha_t: torch.Tensor, dalpha_t: torch.Tensor, n_real: int) -> torch.Tensor:
    """Continuous-time uniform-state NELBO integrand per token, FloatTensor[B, L].

    log_x_theta: [B, L, V] log-probabilities; columns outside the K = n_real real tokens (the
    [MASK] column) must have probability 0. alpha_t, dalpha_t: [B, 1]. With r = K alpha/(1-alpha):
    xbar_theta_j = K alpha x_theta_j + 1 - alpha = (1 - alpha)(1 + r x_theta_j), so
    sum over real j of log xbar_theta_j = K log(1 - alpha) + sum over all columns of log1p(r x_j)
    (a zero-probability column adds log1p(0) = 0): no special case for where [MASK] sits.
    """
    r = n_real * alpha_t / (1.0 - alpha_t)
    # log1p(r x) = softplus(log r + log x): one pass over [B, L, V] instead of exp, mul and log1p
    # (this sum is the loss's only full-vocabulary term besides the log-softmax itself).
    log_r = torch.log(r)
    log1p_sum = F.softplus(log_x_theta + log_r[..., None]).sum(-1)
    # One gather for both picked columns: a gather's backward writes a dense [B, L, V] gradient.
    log_x_xt, log_x_x0 = log_x_theta.gather(-1, torch.stack([xt, x0], dim=-1)).unbind(-1)
    return duo_nelbo_from_stats(log1p_sum, log_x_xt, log_x_x0, (x0 == xt).to(log_x_theta.dtype),
                                alpha_t, dalpha_t, n_real, log_r)


def duo_nelbo_from_stats(log1p_sum: torch.Tensor, log_x_xt: torch.Tensor, log_x_x0: torch.Tensor,
                         eq: torch.Tensor, alpha_t: torch.Tensor, dalpha_t: torch.Tensor, n_real: int,
                         log_r: torch.Tensor) -> torch.Tensor:
    """The integrand of `duo_nelbo_per_token` from its three per-token statistics (any common
    shape): log1p_sum = sum_j softplus(log x_theta_j + log_r), log x_theta at x_t and at x_0, and
    eq = [x_0 == x_t]. trainers/fused_head.py computes the statistics chunk by chunk."""
    K = n_real
    one_minus = 1.0 - alpha_t
    r = K * alpha_t / one_minus
    log1p_xt, log1p_x0 = F.softplus(log_x_xt + log_r), F.softplus(log_x_x0 + log_r)
    x_theta_xt = log_x_xt.exp()

    neq = 1.0 - eq
    xbar_xt = one_minus + K * alpha_t * eq
    xbar_theta_xt = K * alpha_t * x_theta_xt + one_minus
    term1 = K * (1.0 / xbar_xt - 1.0 / xbar_theta_xt)

    c = one_minus / (K * alpha_t + one_minus)
    # sum_j log xbar_theta_j - K log xbar_theta[x_t]: the log(1 - alpha) parts cancel
    term2_theta = -(eq * c + neq) * (log1p_sum - K * log1p_xt) - r * (log1p_x0 - log1p_xt) * neq
    term2_offset = ((K - 1) * c * eq - neq / c) * torch.log(c)
    return dalpha_t / (K * alpha_t) * (term1 - (term2_theta + term2_offset))


def duo_rows(xt: torch.Tensor, x0: torch.Tensor, alpha_t: torch.Tensor, dalpha_t: torch.Tensor,
             n_real: int, forbid_id: int, weights: float | None) -> RowLoss:
    """Duo's NELBO integrand as a loss of row statistics (trainers/fused_head.py); one row per
    token: xt, x0 LongTensor[n], alpha_t, dalpha_t FloatTensor[n]."""
    log_r = torch.log(n_real * alpha_t / (1.0 - alpha_t))
    eq = (x0 == xt).to(alpha_t.dtype)

    def loss_fn(stats: RowStats, part: slice) -> torch.Tensor:
        return duo_nelbo_from_stats(stats.log1p_sum, stats.picked[:, 0] - stats.lse,
                                    stats.picked[:, 1] - stats.lse, eq[part], alpha_t[part],
                                    dalpha_t[part], n_real, log_r[part])

    def stat_grads(stats: RowStats, part: slice, row_weights: torch.Tensor):
        return duo_nelbo_stat_grads(stats, eq[part], alpha_t[part], dalpha_t[part], n_real, log_r[part],
                                    row_weights)

    return RowLoss(torch.stack([xt, x0], dim=-1), forbid_id, loss_fn, weights, log_r, stat_grads)


def duo_nelbo_stat_grads(stats: RowStats, eq, alpha_t, dalpha_t, n_real: int, log_r, row_weights):
    """Gradients of sum(row_weights * duo_nelbo_from_stats) with respect to (lse, picked [c, 2],
    log1p_sum), in closed form (a dozen elementwise ops instead of an autograd call per chunk).
    With u = log x_theta[x_t] = picked_0 - lse, v = log x_theta[x_0] = picked_1 - lse,
    S = log1p_sum and C = alpha'/(K alpha): df/dS = C (eq c + neq); df/dv = C r sigmoid(v + log r)
    neq; df/du = C (K^2 alpha e^u / xbar_theta[x_t]^2 - sigmoid(u + log r) ((eq c + neq) K + r neq)),
    the terms of duo_nelbo_from_stats differentiated one by one; lse enters through u and v only.
    tests/trainers/test_fused_head.py checks them against autograd."""
    K = n_real
    u, v = stats.picked[:, 0] - stats.lse, stats.picked[:, 1] - stats.lse
    one_minus = 1.0 - alpha_t
    r = K * alpha_t / one_minus
    neq = 1.0 - eq
    c = one_minus / (K * alpha_t + one_minus)
    scale = row_weights * dalpha_t / (K * alpha_t)
    xbar_theta_xt = K * alpha_t * u.exp() + one_minus
    d_s = scale * (eq * c + neq)
    d_v = scale * r * torch.sigmoid(v + log_r) * neq
    d_u = scale * (K * K * alpha_t * u.exp() / xbar_theta_xt ** 2
                   - torch.sigmoid(u + log_r) * ((eq * c + neq) * K + r * neq))
    return -(d_u + d_v), torch.stack([d_u, d_v], dim=-1), d_s


class DuoFamily(Family):
    name = ENTRY.name
    attention = ENTRY.attention
    needs_time = True

    @property
    def n_real(self) -> int:
        return self.vocab_size - 1  # every id but [MASK]

    def corrupt(self, tokens: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None):
        """(x_t, alpha_t, alpha'_t) at times t ([B]): the uniform-state corruption of `tokens`."""
        t = t.to(tokens.device)
        alpha_t = noise.alpha(t)
        xt = uniform_corrupt(tokens, alpha_t, self.mask_token_id, self.n_real, generator)
        return xt, alpha_t, noise.alpha_derivative(t)

    def token_nelbo(self, model, tokens: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """NELBO integrand per token at times t ([B]), FloatTensor[B, L] (detached with the fused
        head)."""
        if kernels.fused_head_enabled() and not torch.is_grad_enabled():
            return self.fused_nelbo(model, tokens, t, generator, None).rows.view_as(tokens)
        xt, alpha_t, dalpha_t = self.corrupt(tokens, t, generator)
        logits = model(input_ids=xt, sigma=noise.sigma_from_alpha(alpha_t))
        return kernels.duo_nelbo_from_logits(logits, xt, tokens, alpha_t[:, None], dalpha_t[:, None],
                                             self.n_real, self.mask_token_id)

    def fused_nelbo(self, model, tokens: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator | None, weights: float | None) -> HeadOutput:
        """The NELBO with the head and loss fused (trainers/fused_head.py): the weighted sum over
        tokens and the integrand per token, row-major over [B, L]."""
        xt, alpha_t, dalpha_t = self.corrupt(tokens, t, generator)
        per_token = [v[:, None].expand_as(tokens).flatten() for v in (alpha_t, dalpha_t)]
        return model(input_ids=xt, sigma=noise.sigma_from_alpha(alpha_t),
                     head=duo_rows(xt.flatten(), tokens.flatten(), *per_token, self.n_real,
                                   self.mask_token_id, weights))

    def training_loss(self, model, tokens, t, generator=None):
        if kernels.fused_head_enabled():
            return self.fused_nelbo(model, tokens, t, generator, 1.0 / tokens.numel()).loss
        return self.token_nelbo(model, tokens, t, generator).mean()

    def validation_nats(self, model, tokens, t, generator=None):
        return self.token_nelbo(model, tokens, t, generator).sum(1), tokens.shape[1]

    def sample(self, model, n_samples, seq_len, n_steps, generator, **kwargs):
        """trainers/samplers/duo.py; kwargs: final_step 'ancestral'|'greedy', top_p,
        bos_token_id (use_cache is accepted and changes nothing)."""
        with torch.no_grad():
            return sampler.sample(model, n_samples, seq_len, n_steps, generator,
                                  mask_token_id=self.mask_token_id, vocab_size=self.vocab_size, **kwargs)


def build(options, *, vocab_size: int, mask_token_id: int) -> DuoFamily:
    if not isinstance(options, DuoOptions):
        options = ENTRY.parse_options(dict(options or {}))
    if options.curriculum:
        raise NotImplementedError(
            "duo: the Gaussian-relaxation curriculum is not implemented (the scaling study trains "
            "without it); set `curriculum: false`")
    return DuoFamily(options, vocab_size=vocab_size, mask_token_id=mask_token_id)
