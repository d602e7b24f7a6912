"""Samplers, one module per family (REFERENCE §5), called from each family's `sample` method.

Every sampler module exposes

    sample(model, n_samples, seq_len, n_steps, generator, *, mask_token_id, vocab_size, ...)
        -> LongTensor[n_samples, seq_len], never the [MASK] id;
    CACHE_MODES: the `use_cache` values worth comparing (True first: the default sampler);
    USES_STEPS: whether `n_steps` changes the sampler (AR decodes seq_len steps whatever it is).

so the Pareto measurement (trainers/pareto.py) can ask a family which configurations exist without
a branch on its name. Shared pieces (seeded categorical draws, nucleus filtering, time grids) live
in trainers/samplers/common.py.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def sampler_module(family_name: str) -> ModuleType:
    """trainers.samplers.<family registry name>."""
    return importlib.import_module(f"trainers.samplers.{family_name}")


def cache_modes(family_name: str) -> tuple[bool, ...]:
    return tuple(sampler_module(family_name).CACHE_MODES)


def uses_steps(family_name: str) -> bool:
    return bool(sampler_module(family_name).USES_STEPS)
