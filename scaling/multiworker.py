"""Runs with several workers: Ray Train's TorchTrainer hands DeepSpeed its process group.

A run with `resources.workers: k` becomes one small Ray task (no resources of its own) that builds a
TorchTrainer with k workers, each asking for the run's cpus/gpus per worker. Ray Train starts the
workers (possibly on several nodes), sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT and initialises torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed finds the group
already there (trainers/dist.py fills those variables only when unset). Each worker calls the same
train_run as a single-worker run; the trainer writes metrics, checkpoints, the model and result.json
from rank 0 only. The wrapper task returns when the trainer does, so to the runner a multi-worker
run looks like any other: it ends with result.json in the run directory, or raises.

Failures: Ray Train retries nothing here (max_failures=0, and no controller restarts), because the
runner counts attempts itself. A worker that raises is reported as RunFailedError with that worker's
one-line reason and full traceback, a worker whose process vanished as WorkerDiedError: the same
two errors a single-worker run raises (scaling/forkserver.py), so the executor maps both alike.

Ray Train v2 (the default in Ray 2.60) needs a storage path, else it writes under ~/ray_results.
It is `<run_dir>/ray_train`: the run directory already has to be on storage every node and the
driver share (rank 0 writes result.json there, the driver reads it), a shared folder or a URL
(reached through the same fsspec filesystem as the run store: scaling/storage.py). Nothing is
reported to Ray Train, so only its storage marker lands there; it is removed when the trainer returns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scaling.runspec import RunSpec

RAY_TRAIN_DIR = "ray_train"


def _train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: train; on failure raise RunFailedError carrying the full traceback
    (Ray Train returns the worker's exception without its traceback)."""
    import traceback

    from scaling.forkserver import RunFailedError
    from scaling.runner import describe_exception
    from scaling.staging import drop_scratch
    from scaling.worker import execute_run

    try:
        execute_run(config["spec_json"], config["run_dir"], config["cache_root"])
    except Exception as exc:  # noqa: BLE001 - reported with its reason, below
        line, _ = describe_exception(exc)
        raise RunFailedError(line, traceback.format_exc()) from None
    drop_scratch(config["run_dir"])  # a URL store's: this rank's files are in the store now


def run_failure(error: BaseException) -> Exception:
    """The RunFailedError / WorkerDiedError that a failed TrainingFailedError stands for: the
    lowest failed rank's reason (usually the first; the others typically fail because it left)."""
    from ray.exceptions import RayActorError
    from ray.train import ControllerError, WorkerGroupError

    from scaling.forkserver import RunFailedError, WorkerDiedError
    from scaling.runner import describe_exception

    if isinstance(error, WorkerGroupError) and error.worker_failures:
        rank = min(error.worker_failures)
        cause = error.worker_failures[rank]
        if isinstance(cause, RunFailedError):
            return cause
        # A vanished worker process: Ray Train's health check wraps the RayActorError (the
        # wrapper's class is internal to Ray Train, hence the attribute test).
        if isinstance(cause, RayActorError) or hasattr(cause, "health_check_failure"):
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            return WorkerDiedError(f"training worker of rank {rank} died ({first})")
        line, _ = describe_exception(cause)
        return RunFailedError(f"rank {rank}: {line}", str(error))
    if isinstance(error, ControllerError):
        line, text = describe_exception(error.controller_failure)
        return RunFailedError(f"Ray Train controller: {line}", text)
    line, text = describe_exception(error)
    return RunFailedError(line, text)


def _fit(spec_json: str, run_dir: str, cache_root: str | None) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = RunSpec.from_json(spec_json)
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    storage, cleanup = _ray_train_storage(run_dir)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"spec_json": spec_json, "run_dir": run_dir, "cache_root": cache_root},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=spec.run_id, **storage,
                             failure_config=FailureConfig(max_failures=0, controller_failure_limit=0)),
    )
    try:
        trainer.fit()
    except TrainingFailedError as error:
        raise run_failure(error) from None
    finally:
        cleanup()
    return {"run_id": spec.run_id, "workers": res.workers}


def _ray_train_storage(run_dir: str):
    """RunConfig's storage arguments for <run_dir>/ray_train, and how to remove it afterwards."""
    from scaling.storage import RemotePath, is_url

    if is_url(run_dir):
        import pyarrow.fs

        target = RemotePath(run_dir) / RAY_TRAIN_DIR
        handler = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(target.fs))
        return {"storage_path": target.path, "storage_filesystem": handler}, target.rmtree
    local = Path(run_dir).resolve() / RAY_TRAIN_DIR
    return {"storage_path": str(local)}, lambda: shutil.rmtree(local, ignore_errors=True)


def submit_multiworker(ray, spec: RunSpec, run_dir: Path, cache_root: str | None):
    """Start the run's TorchTrainer from a resource-free task; return its object ref."""
    task = ray.remote(num_cpus=0, max_retries=0)(_fit)
    return task.remote(spec.to_json(), str(run_dir), cache_root)
