"""The runner's bookkeeping with an in-process executor (pure logic: no Ray, no training).
The real Ray + DeepSpeed path is tested end to end in tests/scaling/test_runner_ray.py."""

import json
from pathlib import Path

import pandas as pd
import pytest

from scaling.runner import Outcome, decide, estimated_seconds, fits_alongside, resource_need, run_sweep
from scaling.store import RunStore, write_atomic
from scaling.sweepfile import parse_sweep, read_yaml
from scaling.grid import expand

REPO = Path(__file__).resolve().parents[2]


class FakeExecutor:
    """Finishes each submitted run at the next wait(); fails runs listed in `fail` (per attempt)."""

    def __init__(self, slots=2, fail=None):
        self.slots, self.fail, self.submitted, self._ready = slots, dict(fail or {}), [], []

    def fits(self, spec, running):
        return len(running) < self.slots

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


# ---------------------------------------------------------------- runs of different sizes


def _tiered_specs(tmp_path):
    """The smoke grid with its largest model on 2 workers x 1 GPU, the others on 1 GPU."""
    raw = read_yaml(REPO / "sweeps" / "smoke.yaml")
    raw["output_dir"] = str(tmp_path)
    raw["resources"] = {"cpus_per_worker": 1, "gpus_per_worker": 1,
                        "tiers": [{"min_n_params": 1.4e5, "workers": 2}]}
    sweep = parse_sweep(raw)
    return sweep, list(expand(sweep).runs)


def test_a_run_starts_when_its_resources_fit_beside_the_runs_in_flight(tmp_path):
    _, specs = _tiered_specs(tmp_path)
    big = next(s for s in specs if s.resources.workers == 2)
    small = next(s for s in specs if s.resources.workers == 1)
    assert resource_need(big) == {"CPU": 2.0, "GPU": 2.0} and resource_need(small) == {"CPU": 1.0, "GPU": 1.0}
    total = {"CPU": 16.0, "GPU": 3.0}
    assert fits_alongside(total, [], big) and fits_alongside(total, [big], small)
    assert not fits_alongside(total, [big, small], small)  # the GPUs are taken, CPUs are not
    assert not fits_alongside(total, [small, small], big)
    assert fits_alongside({"CPU": 1.0}, [], big)  # alone, a run always starts (it waits in Ray's queue)
    assert not fits_alongside(total, [small], small, max_concurrent=1)


class ResourceExecutor(FakeExecutor):
    """FakeExecutor that admits by resources and records what was in use at each start."""

    def __init__(self, total):
        super().__init__()
        self.total, self.in_use = total, []

    def fits(self, spec, running):
        ok = fits_alongside(self.total, running, spec)
        if ok:
            self.in_use.append(sum(resource_need(r)["GPU"] for r in [*running, spec]))
        return ok


def test_a_sweep_of_mixed_runs_never_asks_for_more_than_the_cluster(tmp_path):
    sweep, specs = _tiered_specs(tmp_path)
    executor = ResourceExecutor({"CPU": 8.0, "GPU": 3.0})
    outcome = run_sweep(specs, RunStore(tmp_path, sweep.name), executor, poll_s=0)
    assert outcome.ok and len(outcome.succeeded) == len(specs)
    assert max(executor.in_use) == 3.0  # full, never over: a 2-GPU run beside a 1-GPU one
    longest_first = sorted(specs, key=estimated_seconds, reverse=True)
    assert executor.submitted == [s.run_id for s in longest_first]  # in order: none jumps the queue
