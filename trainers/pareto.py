"""Measuring samplers for the speed/quality Pareto frontier (REFERENCE §5): throughput, gen-PPL,
unigram entropy, one row per checkpoint x steps x cache mode.

- Throughput: generated tokens per second of the sampling call alone (model loading, decoding and
  judging excluded), after one untimed warm-up call per checkpoint and cache mode; on a GPU the
  timer is synchronised on both sides. Each configuration is timed `repeats` times with the same
  seed (so the same samples) and the median is kept: small CPU runs take milliseconds, and one
  timing on a shared machine is noise. Generated tokens = n_samples x (seq_len - 1): every family
  conditions on the same start token at position 0, the tokenizer's <eos> (the document separator
  of the packed training data), so none of them has to invent the first token of a document.
- Quality: generative perplexity under a judge, token-weighted: exp(sum of NLL / number of scored
  tokens) over all samples, the judge scoring x[1:] given x[:-1] of each sample. The judge is an AR
  checkpoint of the sweep (token ids shared when its tokenizer files are the same as the sampled
  run's) or any local transformers causal LM, which gets the decoded text re-tokenized with its
  own tokenizer. Unigram entropy of each sample's generated tokens catches degenerate repetition
  (a sampler that repeats one token gets a low gen-PPL and an entropy near 0).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from scaling.errors import UserError
from trainers.backbone import DiTConfig, DiTModel, forbid_token
from trainers.families import build_family
from trainers.records import MODEL_DIR
from trainers.samplers import cache_modes, uses_steps
from trainers.tokenizer import load_tokenizer, pretrained_fingerprint

JUDGE_BATCH = 16  # sequences per judge forward
COLUMNS = ("family", "family_name", "run_id", "n_steps", "use_cache", "tokens_per_second", "gen_ppl",
           "gen_ppl_log_se", "entropy_mean", "entropy_min", "n_samples", "seq_len", "seconds",
           "n_model_calls", "judge")


@dataclass
class LoadedRun:
    """A trained checkpoint ready to sample: its family (label and registry entry) and model."""

    label: str
    run_id: str
    family: object  # trainers.families.base.Family
    model: DiTModel
    tokenizer: object
    tokenizer_fingerprint: str


def read_run_spec(run_dir: Path) -> dict:
    """The run's spec (spec.json, else the spec inside result.json)."""
    for name, key in (("spec.json", None), ("result.json", "spec")):
        path = run_dir / name
        if path.is_file():
            record = json.loads(path.read_text())
            return record[key] if key else record
    raise UserError(f"{run_dir}: neither spec.json nor result.json; is this a run folder of the sweep?")


def load_run(run_dir: Path, run_id: str, device) -> LoadedRun:
    """The saved model and tokenizer of a finished run (UserError when it has none)."""
    model_dir = Path(run_dir) / MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise UserError(f"run {run_id} has no trained model at {model_dir}; wait for it to finish "
                        "(`scaling status SWEEP`) or name another run")
    spec = read_run_spec(Path(run_dir))
    model = DiTModel.from_pretrained(str(model_dir)).to(device).eval()
    tokenizer = load_tokenizer(model_dir)
    mask_token_id = model.config.mask_token_id
    if mask_token_id is None:
        mask_token_id = tokenizer.mask_token_id
    family = build_family(spec["family"], spec.get("options") or {}, vocab_size=model.config.vocab_size,
                          mask_token_id=mask_token_id)
    return LoadedRun(spec.get("label", spec["family"]), run_id, family, model, tokenizer,
                     pretrained_fingerprint(str(model_dir)))


# -- quality -------------------------------------------------------------------------------------

def unigram_entropy(samples: torch.Tensor) -> torch.Tensor:
    """FloatTensor[B]: entropy (nats) of each row's empirical token distribution."""
    entropies = []
    for row in samples:
        counts = torch.unique(row, return_counts=True)[1].double()
        p = counts / counts.sum()
        entropies.append(-(p * p.log()).sum())
    return torch.stack(entropies).float()


@dataclass
class Judge:
    """A causal LM that scores samples. `kind` is "dit" (an AR checkpoint of this project) or "hf"."""

    name: str
    kind: str
    model: object
    tokenizer: object
    tokenizer_fingerprint: str | None
    max_length: int | None
    device: torch.device

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "dit":  # causal: right padding cannot reach the real tokens
            return forbid_token(self.model(input_ids=ids, attention="causal"), self.model.config.mask_token_id)
        return self.model(input_ids=ids, attention_mask=attention_mask).logits.float()

    def row_nats(self, rows: list[list[int]]) -> tuple[list[float], list[int]]:
        """Per row (rows shorter than 2 tokens left out): summed -log p(x_i | x_<i) over i >= 1,
        and the number of tokens scored."""
        nats_per_row, counts = [], []
        rows = [r[:self.max_length] if self.max_length else r for r in rows if len(r) >= 2]
        for start in range(0, len(rows), JUDGE_BATCH):
            batch = rows[start:start + JUDGE_BATCH]
            width = max(len(r) for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long, device=self.device)
            valid = torch.zeros(len(batch), width, dtype=torch.bool, device=self.device)
            for i, r in enumerate(batch):
                ids[i, :len(r)] = torch.tensor(r, device=self.device)
                valid[i, :len(r)] = True
            log_p = torch.log_softmax(self.logits(ids[:, :-1], valid[:, :-1].long()), dim=-1)
            nats = -log_p.gather(-1, ids[:, 1:, None]).squeeze(-1)
            scored = valid[:, 1:]
            nats_per_row += torch.where(scored, nats, 0.0).double().sum(1).tolist()
            counts += scored.sum(1).tolist()
        return nats_per_row, counts


def load_dit_judge(run_dir: Path, name: str, device) -> Judge:
    loaded = load_run(run_dir, name, device)
    if loaded.model.config.attention != "causal":
        raise UserError(f"judge {name} is a {loaded.family.name} model; the judge must be autoregressive")
    return Judge(name, "dit", loaded.model, loaded.tokenizer, loaded.tokenizer_fingerprint, None, device)


def load_judge(path: str | Path, device) -> Judge:
    """A judge from a folder: this project's run folder or model/ folder (an AR DiT), or any local
    transformers causal LM (AutoModelForCausalLM, local files only, with its own tokenizer)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--judge: no such folder {str(path)!r}; give a local transformers causal LM "
                        "folder (config.json + weights + tokenizer) or an AR run folder of the sweep")
    if (path / MODEL_DIR / "config.json").is_file():
        return load_dit_judge(path, path.name, device)
    config_path = path / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()).get("model_type") == DiTConfig.model_type:
        return load_dit_judge(path.parent, path.parent.name, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"--judge {path}: cannot load a causal LM and its tokenizer "
                        f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from exc
    config = model.config
    max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return Judge(str(path), "hf", model, tokenizer, None, max_length, device)


def generative_perplexity(judge: Judge, samples: torch.Tensor, run: LoadedRun) -> tuple[float, float]:
    """(gen-PPL, standard error of its log) of the samples under the judge.

    gen-PPL = exp(total NLL / scored tokens), token-weighted. Its log is a ratio of per-sample sums,
    so the standard error is the ratio estimator's, sqrt(sum_i (y_i - R n_i)^2 / (S (S - 1))) / n_bar
    over S samples with y_i nats on n_i tokens: what tells a trend over step counts from noise."""
    if judge.kind == "dit" and judge.tokenizer_fingerprint == run.tokenizer_fingerprint:
        rows = samples.tolist()  # same tokenizer: score the sampled ids themselves
    else:
        texts = run.tokenizer.batch_decode(samples.tolist(), skip_special_tokens=True)
        rows = [judge.tokenizer(text)["input_ids"] for text in texts]
    with torch.no_grad():
        nats, counts = judge.row_nats(rows)
    y, n = torch.tensor(nats, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
    if n.sum() == 0:
        return float("nan"), float("nan")
    ratio = y.sum() / n.sum()
    se = float("nan") if len(y) < 2 else float(
        ((y - ratio * n).pow(2).sum() / (len(y) * (len(y) - 1))).sqrt() / n.mean())
    return float(ratio.exp()), se


# -- speed ---------------------------------------------------------------------------------------

def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_sample(run: LoadedRun, n_samples: int, seq_len: int, n_steps: int, use_cache: bool,
                 seed: int, device) -> tuple[torch.Tensor, float, int]:
    """(samples, seconds of the sampling call, model calls made)."""
    calls = [0]
    hook = run.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        generator = torch.Generator(device=device).manual_seed(seed)
        _synchronize(device)
        start = time.perf_counter()
        samples = run.family.sample(run.model, n_samples, seq_len, n_steps, generator, use_cache=use_cache,
                                    bos_token_id=run.tokenizer.eos_token_id)
        _synchronize(device)
        return samples, time.perf_counter() - start, calls[0]
    finally:
        hook.remove()


def measure_run(run: LoadedRun, judge: Judge, steps: list[int], *, n_samples: int, seq_len: int,
                seed: int, device, repeats: int = 1,
                log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Rows for every (steps, cache mode) of one checkpoint, and its samples by (steps, use_cache)."""
    name = run.family.name
    step_counts = sorted(set(steps)) if uses_steps(name) else [seq_len - 1]
    rows, samples_by_config = [], {}
    for use_cache in cache_modes(name):
        timed_sample(run, n_samples, seq_len, step_counts[0], use_cache, seed, device)  # warm-up
        for n_steps in step_counts:
            samples, seconds, n_calls = timed_sample(run, n_samples, seq_len, n_steps, use_cache, seed, device)
            timings = [seconds] + [timed_sample(run, n_samples, seq_len, n_steps, use_cache, seed, device)[1]
                                   for _ in range(repeats - 1)]
            seconds = statistics.median(timings)
            if (samples == run.family.mask_token_id).any():
                raise RuntimeError(f"{name} sampler left [MASK] in its output")  # a sampler bug
            entropy = unigram_entropy(samples[:, 1:].cpu())
            gen_ppl, gen_ppl_log_se = generative_perplexity(judge, samples, run)
            row = {"family": run.label, "family_name": name, "run_id": run.run_id, "n_steps": n_steps,
                   "use_cache": use_cache, "tokens_per_second": n_samples * (seq_len - 1) / seconds,
                   "gen_ppl": gen_ppl, "gen_ppl_log_se": gen_ppl_log_se,
                   "entropy_mean": float(entropy.mean()), "entropy_min": float(entropy.min()),
                   "n_samples": n_samples, "seq_len": seq_len, "seconds": seconds,
                   "n_model_calls": n_calls, "judge": judge.name}
            log(f"  {run.label:<14} steps {n_steps:>5} cache {'on ' if use_cache else 'off'}: "
                f"{row['tokens_per_second']:>10,.0f} tok/s  gen-PPL {row['gen_ppl']:>9.2f}  "
                f"entropy {row['entropy_mean']:.2f}  ({n_calls} model calls)")
            rows.append(row)
            samples_by_config[(n_steps, use_cache)] = samples.cpu()
    return rows, samples_by_config


def measure_runs(runs: list[LoadedRun], judge: Judge, steps: list[int], *, n_samples: int, seq_len: int,
                 seed: int, device, repeats: int = 1,
                 log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """The measurement table (COLUMNS) over every checkpoint, and samples by (run_id, steps, cache)."""
    rows, samples = [], {}
    for run in runs:
        run_rows, run_samples = measure_run(run, judge, steps, n_samples=n_samples, seq_len=seq_len,
                                            seed=seed, device=device, repeats=repeats, log=log)
        rows.extend(run_rows)
        samples.update({(run.run_id, *key): value for key, value in run_samples.items()})
    return pd.DataFrame(rows, columns=list(COLUMNS)), samples


def samples_markdown(runs: list[LoadedRun], table: pd.DataFrame, samples: dict, per_run: int = 3) -> str:
    """A few decoded samples per checkpoint, from its slowest (most steps, cache on) configuration."""
    lines = ["# Samples", "", "Decoded with each run's tokenizer; `<eos>` separates documents.", ""]
    for run in runs:
        rows = table[table["run_id"] == run.run_id].sort_values(["n_steps", "use_cache"], ascending=False)
        best = rows.iloc[0]
        ids = samples[(run.run_id, int(best["n_steps"]), bool(best["use_cache"]))][:per_run]
        lines += [f"## {run.label} ({run.run_id})", "",
                  f"{int(best['n_steps'])} steps, cache {'on' if best['use_cache'] else 'off'}, "
                  f"gen-PPL {best['gen_ppl']:.2f}, mean entropy {best['entropy_mean']:.2f} nats", ""]
        for i, row in enumerate(ids.tolist()):
            text = run.tokenizer.decode(row, skip_special_tokens=False).replace("\n", " ")
            lines += [f"{i + 1}. {text}", ""]
    return "\n".join(lines)
