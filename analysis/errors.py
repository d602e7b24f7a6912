"""Why a fit failed, said in words the user can act on.

A fit that cannot be trusted raises FitError instead of returning a number: too few points, a
parabola that opens downwards (non-positive curvature), non-finite input, a vertex outside the
sampled model sizes (unless the caller accepts edge vertices). It names the group and the budget
so a sweep with twenty groups says which one broke. There is never a silent fallback to the raw
minimum (STYLE.md 7).
"""

from __future__ import annotations


class FitError(Exception):
    """A fit that could not be made; the message names the group, the budget and the reason."""

    def __init__(self, reason: str, *, group: str = "", flops: float | None = None):
        self.reason = reason
        self.group = group
        self.flops = flops
        where = []
        if group:
            where.append(f"group {group}")
        if flops is not None:
            where.append(f"budget {flops:.3g} FLOPs")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + reason)

    def with_group(self, group: str) -> "FitError":
        """The same error, labelled with the group it happened in (fits below the group level
        do not know their group's name)."""
        return FitError(self.reason, group=group, flops=self.flops)
