"""A run spec: everything one training run needs, frozen, with a content-addressed id.

run_id = readable prefix + hash of the run's full config, so the same YAML always yields the same
ids and a changed recipe yields new ones. The hash covers what determines the result (family and
options, shape, vocabulary, budget and steps, FLOPs convention, recipe, data, evaluation); it leaves
out where and how the run executes (sweep name, resources, retries), so moving a run to other
hardware or another sweep file does not retrain it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from scaling.schema import DataSpec, EvalSpec, Recipe, Resources, Shape

HASH_CHARS = 10
UNHASHED_FIELDS = {"sweep", "resources", "max_retries"}


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: str
    family: str  # registry name
    label: str  # family + options, e.g. mdlm-low_var
    options: dict[str, Any]
    shape: Shape
    vocab_size: int
    flops_budget: float
    flops_convention: str
    fwd_flops_per_token: float
    steps: int
    warmup_steps: int
    n_tokens: int  # tokens trained on: steps * global_batch_seqs * seq_len
    n_params: int  # non-embedding, the paper's x-axis
    n_params_total: int
    tokens_per_param: float
    achieved_flops: float
    recipe: Recipe
    data: DataSpec
    evaluation: EvalSpec
    resources: Resources
    max_retries: int = 1

    def hashed_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=UNHASHED_FIELDS)

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.hashed_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        budget = f"{self.flops_budget:.3g}".replace("+", "")
        return f"{self.label}-C{budget}-{self.shape.tag}-{self.config_hash[:HASH_CHARS]}"

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "config_hash": self.config_hash,
                           **self.model_dump(mode="json")}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        raw = json.loads(text)
        raw.pop("run_id", None)
        raw.pop("config_hash", None)
        return cls.model_validate(raw)
