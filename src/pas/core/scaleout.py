"""Scale-out on Ray: one model-holding actor per GPU (or per CPU slot) runs the tasks of a batch stage.

A machine setting, never a param: `PAS_RAY_ADDRESS=local` starts a Ray instance with this machine's CPUs and GPUs,
`auto` or `ray://host:port` joins a running cluster (e.g. one started on SLURM by scripts/ray_cluster.sbatch), and
unset keeps the single-process path. Each actor builds its worker (the loaded model) once and then runs tasks in
turn; a killed actor is restarted and its task retried, so a task must be idempotent (write atomically, return
what it did). Results come back in task order, so outputs do not depend on which actor ran what. The PAS_*
settings travel to the actors; on a CPU, torch's results are bit-identical across processes only for the same
intra-op thread count, which PAS_NUM_THREADS fixes (Ray gives each CPU actor one thread otherwise).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from tqdm import tqdm

from pas.core.config import PasError

log = logging.getLogger(__name__)

RETRIES = 3  # restarts of a killed actor, and retries of the task it was running
_END = object()  # the end of a task stream


def ray_address() -> str | None:
    """PAS_RAY_ADDRESS (`local`, `auto`, `ray://host:port` or host:port), or None when unset or empty."""
    value = os.environ.get("PAS_RAY_ADDRESS", "").strip()
    if not value:
        return None
    if value not in ("local", "auto") and ":" not in value:
        raise PasError(f"PAS_RAY_ADDRESS={value!r} is not a Ray address; use local, auto or ray://host:port "
                       "(or unset it for the single-process path)")
    return value


def connect(address: str) -> None:
    """Start (local) or join (auto, ray://...) a Ray cluster, once per process."""
    import ray

    if ray.is_initialized():
        return
    settings = {key: value for key, value in os.environ.items() if key.startswith("PAS_")}
    ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=True,
             logging_level=logging.WARNING, runtime_env={"env_vars": settings})  # the machine settings travel
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})


class _Holder:
    """Inside a Ray actor: builds the worker once, then calls it for each task."""

    def __init__(self, make_worker: Callable[[], Callable[..., Any]]) -> None:
        from pas.core.runtime import configure_threads, setup_logging

        setup_logging()
        configure_threads()  # PAS_NUM_THREADS: CPU results are bit-identical only for the same thread count
        self.worker = make_worker()

    def run(self, task: Any) -> Any:
        """The worker's result for one task."""
        return self.worker(task)


def actor_slots(resources: dict[str, float], tasks: int | None) -> tuple[int, dict[str, float]]:
    """(actors, resources per actor): one per GPU when the cluster has GPUs, else one per CPU; never more actors
    than tasks (when their number is known). PAS_RAY_ACTORS caps the count."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count, each = (gpus, {"num_gpus": 1, "num_cpus": 1}) if gpus else (max(1, cpus), {"num_cpus": 1})
    cap = os.environ.get("PAS_RAY_ACTORS", "")
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise PasError(f"PAS_RAY_ACTORS={cap!r} is not a positive integer; unset it or use e.g. 4")
        count = min(count, int(cap))
    return max(1, min(count, tasks) if tasks is not None else count), each


def map_on_ray(make_worker: Callable[[], Callable[..., Any]], tasks: Iterable[Any], address: str, desc: str,
               total: int | None = None) -> Iterator[Any]:
    """Yield worker(task) for every task, in task order, computed by actors that each called make_worker() once.

    make_worker and the tasks travel to the actors by pickle; tasks are drawn lazily, two per actor in flight, so
    a stream of large tasks (a pool's image bytes) never sits in memory whole. A worker killed mid-task is
    restarted (its model loaded again) and the task retried up to RETRIES times.
    """
    import ray
    from ray.util import ActorPool

    if total is None and isinstance(tasks, Sized):
        total = len(tasks)
    connect(address)
    count, each = actor_slots(ray.cluster_resources(), total)
    if total == 0:
        return
    actor = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **each)(_Holder)
    actors = [actor.remote(make_worker) for _ in range(count)]
    log.info("%s: %s task(s) on %d Ray actor(s) %s", desc, total if total is not None else "streamed", count, each)
    pool, stream, running = ActorPool(actors), iter(tasks), 0

    def submit() -> bool:
        task = next(stream, _END)
        if task is _END:
            return False
        pool.submit(lambda a, t: a.run.remote(t), task)
        return True

    try:
        for _ in range(2 * count):
            running += submit()
        with tqdm(total=total, desc=desc, unit="task") as bar:
            while running:
                result = pool.get_next()          # in submission order
                running += submit() - 1
                bar.update()
                yield result
    finally:
        for handle in actors:
            ray.kill(handle)
