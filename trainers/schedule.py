"""Learning-rate schedule: linear warmup, then cosine decay to a floor (REFERENCE §3).

A pure function of the optimizer step, so the engine sets the learning rate directly each step and a
resumed run needs no scheduler state: lr(step) is the same however the run got to `step`.

Steps are 0-indexed optimizer steps (the step about to be taken). Warmup climbs linearly and reaches
`lr_peak` at step `warmup_steps` (step 0 already gets lr_peak / warmup_steps, never 0: a zero-lr step
would spend compute for nothing). The cosine then falls from `lr_peak` at step `warmup_steps` to
exactly `lr_min` at the last step, `total_steps - 1`.
"""

from __future__ import annotations

import math


def compute_lr(step: int, *, lr_peak: float, lr_min: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-indexed) of a `total_steps`-step run."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return lr_peak * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return lr_peak if step <= warmup_steps else lr_min
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return lr_min + 0.5 * (lr_peak - lr_min) * (1.0 + math.cos(math.pi * progress))
