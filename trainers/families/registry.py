"""The family registry: a family is an entry chosen by a string (`family: mdlm` in YAML).

This module is deliberately light (no torch) so that planning a sweep can validate family names and
options without importing the training stack. Each entry names its options model, its attention
pattern (which the `full` FLOPs convention needs) and the module that implements it; that module is
imported only when a run trains or samples.

An implementation module (trainers/families/<name>.py) exposes `build(options) -> Family`, a
`Family` being the small protocol in trainers/families/base.py (corrupt, training loss, validation
loss, sampler).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FamilyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AROptions(FamilyOptions):
    """Autoregressive: no options; exact next-token NLL."""


class MDLMOptions(FamilyOptions):
    """Masked diffusion. `low_var` drops the 1/t weight of the NELBO (REFERENCE §1); validation
    always reports the NELBO."""

    objective: Literal["nelbo", "low_var"] = "low_var"


class DuoOptions(FamilyOptions):
    """Uniform-state diffusion, trained on the closed-form continuous-time NELBO."""

    curriculum: bool = False  # Duo's Gaussian-relaxation curriculum; the scaling study trains without it


class EsoLMOptions(FamilyOptions):
    """Interpolating AR <-> MDLM. alpha_0 = 1: pure (low-variance) diffusion, as in the sweeps."""

    alpha_0: float = Field(default=1.0, gt=0.0, le=1.0)


@dataclass(frozen=True)
class FamilyEntry:
    name: str
    options_model: type[FamilyOptions]
    attention: Literal["causal", "bidirectional", "permuted_causal"]
    module: str
    summary: str
    # Every step's tensors have the same shapes: the head scores every position. Compiling the whole
    # model (resources.compile: whole) needs it; a family that scores a varying number of rows (the
    # masked ones) would recompile that graph at every step (benchmarks/GPU_NOTES.md).
    fixed_shapes: bool = False

    @property
    def causal_flops(self) -> bool:
        """Whether attention costs count as causal (half) under the `full` FLOPs convention."""
        return self.attention != "bidirectional"

    def parse_options(self, raw: dict) -> FamilyOptions:
        return self.options_model.model_validate(raw)

    def load(self):
        """Import the implementation module (torch lives there)."""
        return importlib.import_module(self.module)


FAMILIES: dict[str, FamilyEntry] = {
    entry.name: entry
    for entry in (
        FamilyEntry("ar", AROptions, "causal", "trainers.families.ar",
                    "autoregressive, exact next-token NLL", fixed_shapes=True),
        FamilyEntry("mdlm", MDLMOptions, "bidirectional", "trainers.families.mdlm",
                    "masked (absorbing-state) diffusion, NELBO or low-variance objective"),
        FamilyEntry("duo", DuoOptions, "bidirectional", "trainers.families.duo",
                    "uniform-state diffusion, closed-form continuous-time NELBO", fixed_shapes=True),
        FamilyEntry("esolm", EsoLMOptions, "permuted_causal", "trainers.families.esolm",
                    "interpolating AR <-> masked diffusion, causal attention over a permutation"),
    )
}


def get_entry(name: str) -> FamilyEntry:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}") from None
