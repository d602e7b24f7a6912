"""The runner's bookkeeping with an in-process executor (pure logic: no Ray, no training).
The real Ray + DeepSpeed path is tested end to end in tests/scaling/test_runner_ray.py."""

import json
from pathlib import Path

import pandas as pd
import pytest

from scaling.runner import Outcome, decide, estimated_seconds, run_sweep
from scaling.store import RunStore, write_atomic
from scaling.sweepfile import load_plan, parse_sweep, read_yaml
from scaling.grid import expand

REPO = Path(__file__).resolve().parents[2]


class FakeExecutor:
    """Finishes each submitted run at the next wait(); fails runs listed in `fail` (per attempt)."""

    def __init__(self, slots=2, fail=None):
        self.slots, self.fail, self.submitted, self._ready = slots, dict(fail or {}), [], []

    def capacity(self, spec):
        return self.slots

    def submit(self, spec, run_dir):
        self.submitted.append(spec.run_id)
        self._ready.append((spec, run_dir))
        return spec.run_id

    def wait(self, handles, timeout_s):
        done, self._ready = self._ready, []
        out = []
        for spec, run_dir in done:
            if self.fail.get(spec.run_id, 0) > 0:
                self.fail[spec.run_id] -= 1
                out.append((spec.run_id, Outcome(ok=False, error="RuntimeError: boom")))
                continue
            record = {"run_id": spec.run_id, "spec": json.loads(spec.to_json()), "val_loss": 3.0,
                      "n_params": spec.n_params, "n_tokens": spec.n_tokens,
                      "achieved_flops": spec.achieved_flops}
            write_atomic(Path(run_dir) / "result.json", json.dumps(record))
            out.append((spec.run_id, Outcome(ok=True)))
        return out

    def cancel(self, handles):
        pass


@pytest.fixture
def smoke(tmp_path):
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    raw["output_dir"] = str(tmp_path)
    sweep = parse_sweep(raw)
    return raw, sweep, list(expand(sweep).runs), RunStore(tmp_path, sweep.name)


def test_runs_everything_then_skips_everything(smoke):
    _, _, specs, store = smoke
    first = run_sweep(specs, store, FakeExecutor())
    assert first.ok and len(first.succeeded) == len(specs)
    table = pd.read_parquet(store.root / "results.parquet")
    assert len(table) == len(specs) and set(table["family"]) == {"ar", "mdlm-lowvar"}
    again = FakeExecutor()
    second = run_sweep(specs, store, again)
    assert again.submitted == [] and len(second.skipped) == len(specs)


def test_longest_first(smoke):
    _, _, specs, store = smoke
    ex = FakeExecutor(slots=1)
    run_sweep(specs, store, ex)
    costs = {s.run_id: estimated_seconds(s) for s in specs}
    order = [costs[r] for r in ex.submitted]
    assert order == sorted(order, reverse=True)


def test_failure_is_retried_then_recorded(smoke):
    _, _, specs, store = smoke
    flaky, broken = specs[0].run_id, specs[1].run_id
    ex = FakeExecutor(fail={flaky: 1, broken: 99})
    outcome = run_sweep(specs, store, ex)
    assert flaky in outcome.succeeded
    assert outcome.failed == {broken: "RuntimeError: boom"}
    assert ex.submitted.count(broken) == 1 + specs[1].max_retries
    status = store.read_status(broken)
    assert status["state"] == "failed" and status["error"] == "RuntimeError: boom"
    assert len(outcome.succeeded) == len(specs) - 1
    assert decide(store, specs[1]).action == "retry"


def test_adding_a_budget_runs_only_new_cells(smoke):
    raw, _, specs, store = smoke
    run_sweep(specs, store, FakeExecutor())
    bigger = list(expand(parse_sweep({**raw, "budgets": [*raw["budgets"], 2.4e10]})).runs)
    ex = FakeExecutor()
    run_sweep(bigger, store, ex)
    assert set(ex.submitted) == {s.run_id for s in bigger} - {s.run_id for s in specs}


def test_torn_or_missing_records(smoke):
    _, _, specs, store = smoke
    spec = specs[0]
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text('{"run_id": "trunc')  # a torn write is not a result
    assert decide(store, spec).action == "run"
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_10").mkdir()
    assert decide(store, spec).action == "resume"
