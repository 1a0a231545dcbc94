"""Workers as Ray actors on an existing Ray cluster: the same worker code and shard protocol.

Each actor runs ``boxmask.jobs.worker.Worker`` on the output directory, exactly like a local or
Slurm worker: shards are claimed with leases in ``<output>/state``, results and per-image files
are written there, and any mix of Ray, Slurm and local workers can share one job. The output
directory (and the images) must therefore be on a filesystem that every Ray node sees at the same
path. Ray only places the workers: ``gpus_per_worker`` pins each actor to its GPU(s) (Ray sets
``CUDA_VISIBLE_DEVICES``; the engine then runs on ``cuda``), ``cpus_per_worker`` sizes its CPU
threads.

Stopping: SIGINT/SIGTERM to the driver asks every actor to stop after its current batch (their
shards resume later). An actor that dies (node lost, out of memory) is replaced while work is
left; its shard is taken over when its lease goes stale (at once on the same node, after the
lease timeout on another). The driver saw that death happen while the job ran on, so it is
recorded as *observed* and counts against the image the actor was on (``boxmask.jobs.deaths``).

``ray`` is an optional dependency: ``pip install 'boxmask[ray]'``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from ..exitcodes import report_exit
from .deaths import record_observed_deaths
from .lease import DEFAULT_TIMEOUT_S
from .signals import StopRequested
from .status import job_status
from .worker import run_worker

log = logging.getLogger(__name__)


class RayUnavailableError(RuntimeError):
    """Ray is not installed."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError("the Ray backend needs ray: pip install 'boxmask[ray]'") from e
    return ray


class RayWorker:
    """The body of one Ray actor (wrapped with ``ray.remote`` by ``run_ray_workers``)."""

    def __init__(self, out_dir: str, worker_id: str, options: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.worker_id = worker_id
        self.options = dict(options)
        self.stop_requested = StopRequested()

    def run(self) -> dict[str, Any]:
        """Work until no shard is left or ``stop`` is called; return the ``WorkerReport``."""
        ray = import_ray()
        options = dict(self.options)
        overrides = dict(options.pop("engine_overrides", None) or {})
        if ray.get_gpu_ids() and overrides.get("device") in (None, "auto"):
            overrides["device"] = "cuda"
        threads = options.pop("threads", None)
        if threads:
            from ..threads import set_threads

            set_threads(int(threads))
        report = run_worker(self.out_dir, worker_id=self.worker_id, stop=self.stop_requested,
                            engine_overrides=overrides, **options)
        return {**report.to_json(), "host": socket.gethostname(), "pid": os.getpid()}

    def stop(self) -> None:
        """Ask ``run`` to stop after the batch in hand (called from another actor thread)."""
        self.stop_requested.event.set()


def run_ray_workers(out_dir: str | Path, workers: int, *, address: str | None = None,
                    gpus_per_worker: float = 0, cpus_per_worker: float | None = None,
                    lease_timeout_s: float = DEFAULT_TIMEOUT_S,
                    engine_overrides: dict[str, Any] | None = None,
                    max_attempts: int | None = None, max_restarts: int | None = None,
                    poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Run ``workers`` Ray actors on the job in ``out_dir`` until it is done; return one report
    per actor that ended: ``WorkerReport.to_json()`` plus ``host``, ``pid`` and ``exit_code``
    (``boxmask.exitcodes.report_exit``: an actor that raised has ``error`` instead of counts).

    Connects to the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ...; None:
    ``RAY_ADDRESS``, else a new local instance) unless this process is already connected.
    ``gpus_per_worker`` / ``cpus_per_worker``: Ray resources of each actor (fractions allowed:
    ``gpus_per_worker=0.5`` puts two workers on a GPU; CPUs default to 1, and a CPU-only worker
    limits its threads to them). Actors that die are replaced, ``max_restarts`` times in all
    (default ``2 * workers``).
    """
    ray = import_ray()
    out_dir = str(Path(out_dir).absolute())
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address, log_to_driver=True)
    cpus = 1.0 if cpus_per_worker is None else float(cpus_per_worker)
    options: dict[str, Any] = {"lease_timeout_s": lease_timeout_s,
                               "engine_overrides": dict(engine_overrides or {})}
    if not gpus_per_worker and cpus_per_worker is not None:
        options["threads"] = max(int(cpus), 1)
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus_per_worker, max_concurrency=2)(RayWorker)
    tag = f"ray-{socket.gethostname()}-{os.getpid()}"
    restarts_left = 2 * workers if max_restarts is None else max_restarts
    started = 0
    running: dict[Any, Any] = {}  # run() ref -> actor
    worker_ids: dict[Any, str] = {}  # run() ref -> the actor's worker id
    reports: list[dict[str, Any]] = []
    stopping = threading.Event()

    def start_one() -> None:
        nonlocal started
        worker_id = f"{tag}-{started}"
        actor = actor_cls.remote(out_dir, worker_id, options)
        started += 1
        ref = actor.run.remote()
        running[ref] = actor
        worker_ids[ref] = worker_id

    def request_stop(signum: int, frame: Any) -> None:
        log.warning("stopping the Ray workers after their current batch")
        stopping.set()
        for actor in running.values():
            actor.stop.remote()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            start_one()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            for ref in ready:
                actor = running.pop(ref)
                try:
                    report = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    log.error("a Ray worker died: %s", e)
                    if not stopping.is_set():
                        dead_id = worker_ids.get(ref)
                        record_observed_deaths(
                            out_dir, functools.partial(_owned_by, dead_id),
                            f"ray driver {tag}", f"Ray actor {dead_id} died while the job ran")
                    if (not stopping.is_set() and restarts_left > 0
                            and not job_status(out_dir, lease_timeout_s)["complete"]):
                        restarts_left -= 1
                        start_one()
                        continue
                    report = {"worker_id": None, "error": f"the actor died: {e}"}
                except ray.exceptions.RayTaskError as e:
                    log.error("a Ray worker failed: %s", e)
                    report = {"worker_id": None, "error": str(e)}
                finally:
                    ray.kill(actor, no_restart=True)
                reports.append({**report, "exit_code": report_exit(report)})
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if connected_here:
            ray.shutdown()
    return reports


def submit_ray(out_dir: str | Path, workers: int, *, merge_when_done: bool = True,
               **options: Any) -> dict[str, Any]:
    """Run the job in ``out_dir`` on Ray (``run_ray_workers`` options), then merge it on this
    machine when every shard is done. Returns ``{"reports", "status", "manifest"}`` (manifest
    None when the job is not complete or ``merge_when_done`` is False)."""
    from .merge import merge

    reports = run_ray_workers(out_dir, workers, **options)
    status = job_status(out_dir, options.get("lease_timeout_s", DEFAULT_TIMEOUT_S))
    manifest = merge(out_dir) if merge_when_done and status["complete"] else None
    return {"reports": reports, "status": status, "manifest": manifest}


def _owned_by(worker_id: str | None, owner: dict[str, Any]) -> bool:
    """Whether a lease or failure record ``owner`` names the worker ``worker_id``."""
    return owner.get("worker_id") == worker_id
