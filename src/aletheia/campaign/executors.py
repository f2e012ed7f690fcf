"""Executors: where a campaign's runs execute. A registry, like selectors and architectures.

An executor has one method, ``map(fn, jobs, on_event)``: call ``fn(job)`` for every job, return the
results in job order, and report ``("start", job, None)`` / ``("done", job, record)`` events as they
happen (the progress view listens to them). ``fn`` must never raise: the runner's ``run_one`` turns
every failure into a record, so one bad run cannot stop the others. Register new executors with
``@register_executor("name")`` (``EXECUTORS`` is a ``Registry``); the factory receives the
``ExecutorConfig`` and the campaign folder.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import AletheiaError
from ..registry import Registry

if TYPE_CHECKING:  # the spec validates executor names against this registry: no import back
    from .spec import ExecutorConfig

Event = Callable[[str, Any, Any], None]


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], on_event: Event | None = None) -> list[Any]:
        """``fn`` over ``jobs``: its results (run records) in job order, a lost job's as a failure."""
        ...


ExecutorFactory = Callable[["ExecutorConfig", Path], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")
register_executor = EXECUTORS.register
"""``@register_executor("name")`` above an executor class (or factory) adds it to ``EXECUTORS``."""


def get_executor(cfg: ExecutorConfig, campaign_dir: str | Path) -> Executor:
    """The executor ``cfg.name`` for ``campaign_dir``; an unknown name lists the registered ones."""
    return EXECUTORS.get(cfg.name)(cfg, Path(campaign_dir))


def _emit(on_event: Event | None, kind: str, job: Any, record: dict | None = None) -> None:
    if on_event is not None:
        on_event(kind, job, record)


@register_executor("local")
class LocalExecutor:
    """Sequential, in this process: the default, and the easiest to debug."""

    def __init__(self, cfg: ExecutorConfig, campaign_dir: Path):
        self.cfg = cfg

    def map(self, fn, jobs, on_event=None):
        out = []
        for job in jobs:
            _emit(on_event, "start", job)
            out.append(record := fn(job))
            _emit(on_event, "done", job, record)
        return out


@register_executor("ray")
class RayExecutor:
    """One Ray task per run, asking for the run's CPUs and GPUs; joins a cluster or starts one."""

    def __init__(self, cfg: ExecutorConfig, campaign_dir: Path):
        try:
            import ray
        except ImportError:
            raise AletheiaError("the ray executor needs Ray: pip install 'ray>=2.9'") from None
        self.ray, self.cfg = ray, cfg
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if cfg.address:
                kwargs["address"] = cfg.address
            elif cfg.num_cpus:
                kwargs["num_cpus"] = cfg.num_cpus
            ray.init(**kwargs)

    def map(self, fn, jobs, on_event=None):
        ray = self.ray
        pending: dict[Any, int] = {}
        tasks: dict[float, Any] = {}  # one remote function per GPU need
        for i, job in enumerate(jobs):
            gpus = getattr(job, "gpus", self.cfg.gpus_per_run)
            if gpus not in tasks:
                tasks[gpus] = ray.remote(num_cpus=self.cfg.cpus_per_run, num_gpus=gpus, max_retries=0)(fn)
            pending[tasks[gpus].remote(job)] = i
            _emit(on_event, "start", job)  # queued on the cluster; Ray starts it when resources free up
        results: list[dict | None] = [None] * len(jobs)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            results[i] = ray.get(ready[0])
            _emit(on_event, "done", jobs[i], results[i])
        return results  # type: ignore[return-value]


@register_executor("slurm")
class SlurmExecutor:
    """Slurm through submitit: one job array (or one job per run); ``cluster: local`` runs the jobs as
    local processes with submitit's LocalExecutor, which is how it is tested without a cluster."""

    def __init__(self, cfg: ExecutorConfig, campaign_dir: Path):
        try:
            import submitit
        except ImportError:
            raise AletheiaError("the slurm executor needs submitit: pip install 'submitit>=1.5'") from None
        cluster = cfg.cluster
        if cluster is None and shutil.which("sbatch") is None:
            raise AletheiaError("executor slurm: no 'sbatch' on this machine; run on the cluster's login node, "
                                "or set executor.cluster: local to run the jobs as local processes")
        self.cfg = cfg
        self.executor = submitit.AutoExecutor(folder=str(campaign_dir / "executor-logs" / "%j"), cluster=cluster)
        params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "cpus_per_task": cfg.cpus_per_run}
        if cluster in (None, "slurm"):
            params["slurm_array_parallelism"] = cfg.array_parallelism
            optional = {"gpus_per_node": math.ceil(cfg.gpus_per_run), "slurm_partition": cfg.partition,
                        "slurm_account": cfg.account, "mem_gb": cfg.mem_gb}
            params.update({key: value for key, value in optional.items() if value})  # only those given
        self.executor.update_parameters(name="aletheia", **params)

    def map(self, fn, jobs, on_event=None):
        from submitit.helpers import as_completed

        handles = (self.executor.map_array(fn, list(jobs)) if self.cfg.array
                   else [self.executor.submit(fn, job) for job in jobs])
        for job in jobs:
            _emit(on_event, "start", job)
        results: list[dict | None] = [None] * len(jobs)
        for handle in as_completed(handles, poll_frequency=0.5):
            i = handles.index(handle)
            try:
                results[i] = handle.result()
            except Exception as exc:  # noqa: BLE001 - the job itself died (killed, timed out): keep going
                results[i] = jobs[i].failure(f"executor job failed: {str(exc).splitlines()[0][:300]}")
            _emit(on_event, "done", jobs[i], results[i])
        return results  # type: ignore[return-value]
