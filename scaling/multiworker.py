"""Runs with several workers: Ray Train's TorchTrainer hands DeepSpeed its process group.

A run with `resources.workers: k` becomes one small Ray task (no resources of its own) that builds a
TorchTrainer with k workers, each asking for the run's cpus/gpus per worker. Ray Train starts the
workers (possibly on several nodes), sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT and initialises torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed finds the group
already there. Each worker calls the same train_run as a single-worker run; the engine writes
records and checkpoints from rank 0 only. The wrapper task returns when the trainer does, so to
the runner a multi-worker run looks like any other.
"""

from __future__ import annotations

from pathlib import Path

from scaling.runspec import RunSpec


def _train_loop_per_worker(config: dict) -> None:
    from scaling.worker import execute_run

    execute_run(config["spec_json"], config["run_dir"], config["cache_root"])


def _fit(spec_json: str, run_dir: str, cache_root: str | None) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = RunSpec.from_json(spec_json)
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"spec_json": spec_json, "run_dir": run_dir, "cache_root": cache_root},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=spec.run_id, storage_path=str(Path(run_dir).resolve() / "ray_train")),
    )
    trainer.fit()  # raises TrainingFailedError with the worker's exception on failure
    return {"run_id": spec.run_id, "workers": res.workers}


def submit_multiworker(ray, spec: RunSpec, run_dir: Path, cache_root: str | None):
    """Start the run's TorchTrainer from a resource-free task; return its object ref."""
    task = ray.remote(num_cpus=0, max_retries=0)(_fit)
    return task.remote(spec.to_json(), str(run_dir), cache_root)
