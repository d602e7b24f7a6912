"""Approach 1 (Hoffmann et al. 2022 §3.1): the lower envelope of loss against compute.

Hoffmann take, at each FLOP count, the lowest loss any run reached (over training curves) and fit
power laws to the sizes and token counts of the runs on that envelope. A results table holds only
final losses, so here the envelope is built from the best run at each budget, kept only where it
improves on every smaller budget (a run beaten by a cheaper one is not on the frontier). With a
few sizes per budget this is coarse, quantised to the sampled sizes; approach 2 interpolates
between them. It is reported beside approach 2 as a separate estimate, never as a substitute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import FitError
from analysis.isoflop import MIN_BUDGETS, PowerLaw, fit_power_laws


@dataclass(frozen=True)
class EnvelopePoint:
    flops: float
    n_params: float
    n_tokens: float
    loss: float


@dataclass(frozen=True)
class EnvelopeFit:
    """Power laws through the compute-loss frontier: N = k C^a, D = k' C^b, L = k'' C^c."""

    points: tuple[EnvelopePoint, ...]
    n_params_law: PowerLaw
    n_tokens_law: PowerLaw
    loss_law: PowerLaw
    group: str = ""

    @property
    def a(self) -> float:
        return self.n_params_law.exponent

    @property
    def b(self) -> float:
        return self.n_tokens_law.exponent


def envelope_points(flops, n_params, n_tokens, loss) -> tuple[EnvelopePoint, ...]:
    """Best run per budget, then only budgets whose best beats every cheaper budget's best."""
    flops, n_params, n_tokens, loss = (np.asarray(v, float) for v in (flops, n_params, n_tokens, loss))
    points, best_so_far = [], np.inf
    for c in np.unique(flops):
        at = np.flatnonzero(flops == c)
        i = at[np.argmin(loss[at])]
        if loss[i] < best_so_far:
            points.append(EnvelopePoint(float(c), float(n_params[i]), float(n_tokens[i]), float(loss[i])))
            best_so_far = loss[i]
    return tuple(points)


def fit_envelope(flops, n_params, n_tokens, loss, *, group="") -> EnvelopeFit:
    """Approach 1 for one group; FitError on non-finite input or fewer than 2 frontier budgets."""
    for name, values in (("flops", flops), ("n_params", n_params), ("n_tokens", n_tokens), ("loss", loss)):
        values = np.asarray(values, float)
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise FitError(f"approach 1: {name} has non-finite or non-positive values", group=group)
    points = envelope_points(flops, n_params, n_tokens, loss)
    if len(points) < MIN_BUDGETS:
        raise FitError(
            f"approach 1: {len(points)} budget(s) on the loss frontier; a power law needs >= {MIN_BUDGETS}", group=group
        )
    log_c = np.log([p.flops for p in points])
    laws = []
    for attr in ("n_params", "n_tokens", "loss"):
        coef, exponent = fit_power_laws(log_c, np.log([[getattr(p, attr) for p in points]]))
        laws.append(PowerLaw(float(coef[0]), float(exponent[0]), len(points)))
    return EnvelopeFit(points, *laws, group=group)
