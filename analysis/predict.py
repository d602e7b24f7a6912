"""The study's question at a compute the sweep did not train: for each group, N*, D* and L* at C.

From approach 2's power laws (N* = k C^a, D* = k' C^b, L* = k'' C^c) with bootstrap intervals:
each resample's own law evaluated at C, read at the bootstrap's level. Beside them approach 3's
closed-form allocation when that fit holds. `extrapolation` is C over the largest budget the laws
were fitted on: a prediction at 1e21 FLOPs from budgets up to 1e19 is a 100x extrapolation, and
its interval covers only the noise of the fitted budgets, not a change of law beyond them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.sweep import GroupResult

# (quantity, approach-2 law attribute, bootstrap exponent, bootstrap coefficient)
LAWS = (("n_params", "n_params_law", "a", "n_params_coef"), ("n_tokens", "n_tokens_law", "b", "n_tokens_coef"),
        ("loss", "loss_law", "loss_exponent", "loss_coef"))


@dataclass(frozen=True)
class Prediction:
    """One group at one compute; NaN where its fit failed or it had no bootstrap."""

    group: str
    flops: float
    n_params: float  # N*, approach 2
    n_params_lo: float
    n_params_hi: float
    n_tokens: float  # D*
    n_tokens_lo: float
    n_tokens_hi: float
    loss: float  # L*
    loss_lo: float
    loss_hi: float
    n_params_parametric: float  # approach 3's allocation at C = 6 N D
    n_tokens_parametric: float
    extrapolation: float  # flops / largest fitted budget

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params


def predict_at(g: GroupResult, flops: float) -> Prediction:
    """N*, D*, L* of group g at compute flops (see the module docstring)."""
    nan = math.nan
    values: dict[str, float] = {}
    for name, law_attr, exponent, coef in LAWS:
        law = getattr(g.isoflop, law_attr) if g.isoflop else None
        values[name] = float(law(flops)) if law else nan
        lo = hi = nan
        boot = g.isoflop_boot
        if law and boot is not None and len(boot.samples[exponent]):
            lo, hi = boot.interval_of(boot.power_law_at(coef, exponent, flops))
        values[f"{name}_lo"], values[f"{name}_hi"] = lo, hi
    n3, d3 = (float(v) for v in g.parametric.compute_optimal(flops)) if g.parametric else (nan, nan)
    largest = max(o.flops for o in g.isoflop.optima) if g.isoflop else nan
    return Prediction(group=g.label, flops=float(flops), **values, n_params_parametric=n3, n_tokens_parametric=d3,
                      extrapolation=float(flops) / largest)
