"""Run a conversion's workers as a Slurm job array.

Each array task runs one ``boxmask work DIR`` worker, which claims shards until none is left, so
the number of array tasks is the number of parallel workers, not the number of shards. A task's
worker id is ``slurm-<array job id>_<task id>``.

The batch script runs the worker in the background and waits for it. Slurm sends the batch shell
SIGUSR1 ``grace_s`` seconds before the time limit (``--signal=B:USR1@<grace_s>``); the script
forwards USR1 and TERM (pre-emption, ``scancel``) to the worker, which releases its lease and stops,
and the script exits with the worker's status. A worker that the time limit stopped with shards left
(status ``EXIT_STOPPED`` after USR1) is requeued (``scontrol requeue``): it starts again later
under the same worker id and goes on where it stopped. Tasks are ``--requeue``-able and append to
their log, ``DIR/logs/slurm-<array job id>_<task id>.out``.

A cluster limits array indices to ``0 .. MaxArraySize-1``; more workers than that are submitted
as several arrays. GPUs are requested per task with ``--gpus-per-task`` (needs GRES on the cluster).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..exitcodes import EXIT_STOPPED
from .layout import JobLayout

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 120
"""Seconds before the time limit at which the worker is told to stop (SIGUSR1)."""

_UNSAFE_PATH_CHARS = ('"', "\\", "\n", "\r")


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message carries the command's stderr."""


def default_worker_command() -> list[str]:
    """The command that starts boxmask in the submitter's Python environment.

    The ``boxmask`` entry point beside the running interpreter when there is one, else
    ``<python> -m boxmask.cli``. The interpreter path is made absolute but its symlinks are kept,
    so a virtual environment's ``bin/python`` stays inside the environment.
    """
    python = os.path.abspath(sys.executable)
    entry_point = os.path.join(os.path.dirname(python), "boxmask")
    if os.path.isfile(entry_point) and os.access(entry_point, os.X_OK):
        return [entry_point]
    return [python, "-m", "boxmask.cli"]


def array_sizes(n_tasks: int, max_array_size: int) -> list[int]:
    """Split ``n_tasks`` workers into arrays of at most ``max_array_size`` tasks each.

    >>> array_sizes(20, 9)
    [9, 9, 2]
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    full, rest = divmod(n_tasks, max_array_size)
    return [max_array_size] * full + ([rest] if rest else [])


def time_limit_seconds(time: str) -> int | None:
    """Seconds in a Slurm time limit (``"90"`` minutes, ``"4:00:00"``, ``"2-12"``, ...).

    None for ``"UNLIMITED"`` / ``"INFINITE"``. Formats as ``sbatch --time``: minutes,
    minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
    days-hours:minutes:seconds.
    """
    text = time.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"not a Slurm time limit: {time!r}")
    days, first, b, c = (int(g) if g is not None else None for g in match.groups())
    a = int(first or 0)  # the one group the pattern always matches
    if days is not None:  # days-hours[:minutes[:seconds]]
        return ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if b is not None and c is not None:  # hours:minutes:seconds
        return (a * 60 + b) * 60 + c
    if b is not None:  # minutes:seconds
        return a * 60 + b
    return a * 60  # minutes


def _check_path(path: Path) -> None:
    if any(c in str(path) for c in _UNSAFE_PATH_CHARS):
        raise ValueError(f"output directory not usable in a Slurm script (quote, backslash or "
                         f"line break in its path): {str(path)!r}")


def _log_pattern(logs_dir: Path) -> str:
    # Slurm expands %-patterns in file names: a literal % in the directory is written %%.
    pattern = str(logs_dir).replace("%", "%%") + "/slurm-%A_%a.out"
    return f'"{pattern}"' if any(c.isspace() for c in pattern) else pattern


def render_sbatch(
    output_dir: str | Path,
    array_size: int,
    *,
    partition: str | None = None,
    gpus_per_task: int = 0,
    cpus_per_task: int | None = None,
    mem: str | None = None,
    time: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    throttle: int | None = None,
    grace_s: int = DEFAULT_GRACE_S,
    requeue_on_timeout: bool = True,
    job_name: str = "boxmask",
    boxmask_cmd: Sequence[str] | None = None,
) -> str:
    """The batch script of one array of ``array_size`` workers (indices ``0 .. array_size-1``).

    ``mem`` and ``time`` are passed as written (Slurm syntax: ``"16G"``, ``"4:00:00"``); the time
    limit must exceed ``grace_s``, the seconds between the stop signal and the end.
    ``throttle`` caps the tasks of this array that run at once (``--array=0-K%throttle``).
    ``requeue_on_timeout`` requeues a task whose worker the time limit stopped with shards left.
    ``boxmask_cmd`` replaces the command that starts boxmask (:func:`default_worker_command`);
    the script appends ``work DIR --worker-id slurm-<array job id>_<task id>`` to it.
    """
    if array_size < 1:
        raise ValueError(f"array_size must be at least 1, got {array_size}")
    limit_s = time_limit_seconds(time) if time is not None else None
    if limit_s is not None and limit_s <= grace_s:
        raise ValueError(f"time limit {time!r} leaves no time before the stop signal, sent "
                         f"{grace_s} s before the end: give a longer time or a smaller grace")
    out = Path(output_dir).absolute()
    _check_path(out)
    array = f"0-{array_size - 1}" + (f"%{throttle}" if throttle else "")
    directives = [
        f"--job-name={job_name}",
        f"--array={array}",
        "--nodes=1",
        "--ntasks=1",
        "--requeue",
        f"--signal=B:USR1@{grace_s}",
        "--open-mode=append",
        f"--output={_log_pattern(JobLayout(out).logs_dir)}",
    ]
    optional = {
        "partition": partition,
        "account": account,
        "qos": qos,
        "cpus-per-task": cpus_per_task,
        "gpus-per-task": gpus_per_task or None,
        "mem": mem,
        "time": time,
    }
    directives += [f"--{name}={value}" for name, value in optional.items() if value is not None]
    command = list(boxmask_cmd) if boxmask_cmd is not None else default_worker_command()
    worker = shlex.join([*command, "work", str(out), "--worker-id"])
    body = _BODY.format(worker=worker, requeue=_REQUEUE if requeue_on_timeout else "")
    return "\n".join(["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), body])


_BODY = """
# One boxmask worker: it claims shards of the output directory until none is left.
# Slurm signals this shell (USR1 before the time limit, TERM on pre-emption or scancel); the
# signal is forwarded so that the worker releases its lease and stops cleanly.
task="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
{worker} "slurm-$task" &
child=$!
caught=""
stop_signal=""
forward() {{ caught=$1; stop_signal=$1; kill -s "$1" "$child" 2>/dev/null; }}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
status=0
wait "$child" || status=$?
# A trapped signal ends `wait` early (status > 128) while the worker is still stopping: wait again.
while [ "$status" -gt 128 ] && [ -n "$caught" ]; do
  caught=""
  next=0
  wait "$child" || next=$?
  [ "$next" -eq 127 ] && break  # its status was collected already (older bash): keep it
  status=$next
done
echo "boxmask worker exited with status $status"{requeue}
exit "$status"
"""

_REQUEUE = f"""
if [ "$stop_signal" = USR1 ] && [ "$status" -eq {EXIT_STOPPED} ]; then
  # The time limit is near and shards are left: run this worker again later, where it stopped.
  echo "requeueing $task"
  scontrol requeue "$task"
fi"""


def _run(cmd: Sequence[str], input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), input=input_text, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError as e:
        raise SlurmError(f"{cmd[0]} not found: is this a Slurm login node?") from e


def read_max_array_size() -> int:
    """The cluster's MaxArraySize, from ``scontrol show config``: array indices stay below it."""
    proc = _run(["scontrol", "show", "config"])
    if proc.returncode != 0:
        raise SlurmError(f"scontrol show config failed: {proc.stderr.strip()}")
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    if match is None:
        raise SlurmError("scontrol show config does not report MaxArraySize")
    return int(match.group(1))


def parse_job_id(parsable: str) -> str:
    """The job id from ``sbatch --parsable`` output: ``"1234"`` or ``"1234;cluster"``."""
    first = parsable.strip().splitlines()[0] if parsable.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {parsable!r}")
    return job_id


def submit_array(
    output_dir: str | Path,
    n_tasks: int,
    *,
    extra_sbatch_args: Sequence[str] = (),
    max_array_size: int | None = None,
    **script_options: Any,
) -> list[str]:
    """Submit ``n_tasks`` workers on ``output_dir`` as Slurm arrays; returns the array job ids.

    ``script_options`` are the keyword options of :func:`render_sbatch` (``partition``,
    ``gpus_per_task``, ``cpus_per_task``, ``mem``, ``time``, ``account``, ``qos``, ``throttle``,
    ``grace_s``, ``requeue_on_timeout``, ``job_name``, ``boxmask_cmd``), the same for every array.
    More workers than the cluster's MaxArraySize (read from ``scontrol`` unless given) become
    several arrays, each with its own job id and ``throttle``. Every script is kept as
    ``DIR/slurm/array-<job id>.sbatch``. ``extra_sbatch_args`` go on the sbatch command line, where
    they override the script's directives. Raises :class:`SlurmError` with sbatch's message when a
    submission is refused; arrays submitted before it keep running.
    """
    out = Path(output_dir).absolute()
    layout = JobLayout(out)
    scripts_dir = out / "slurm"
    # Slurm opens the log when a task starts: its directory must exist by then.
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    scripts_dir.mkdir(parents=True, exist_ok=True)
    limit = max_array_size if max_array_size is not None else read_max_array_size()
    job_ids: list[str] = []
    for k, size in enumerate(array_sizes(n_tasks, limit)):
        script = render_sbatch(out, size, **script_options)
        pending = scripts_dir / f"pending-{os.getpid()}-{k}.sbatch"
        pending.write_text(script)
        cmd = ["sbatch", "--parsable", *extra_sbatch_args, str(pending)]
        proc = _run(cmd)
        if proc.returncode != 0:
            rejected = pending.with_name("rejected.sbatch")
            pending.replace(rejected)
            raise SlurmError(
                f"sbatch refused the array (script kept in {rejected}; "
                f"{len(job_ids)} arrays submitted before it: {job_ids}): {proc.stderr.strip()}"
            )
        job_id = parse_job_id(proc.stdout)
        pending.replace(scripts_dir / f"array-{job_id}.sbatch")
        log.info("submitted Slurm array %s: %d workers on %s", job_id, size, out)
        job_ids.append(job_id)
    return job_ids


def slurm_status(job_ids: Iterable[str]) -> dict[str, str]:
    """State of every task of the given jobs, as ``squeue`` knows it (no accounting database).

    Keys are ``"<array job id>_<task id>"`` for array tasks (pending ranges expanded) and the job
    id for other jobs; values are Slurm states (``PENDING``, ``RUNNING``, ``COMPLETED``,
    ``FAILED``, ``CANCELLED``, ...). Tasks that ended more than the cluster's MinJobAge ago are
    forgotten by squeue and are absent.
    """
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    proc = _run(["squeue", "--noheader", "--array", "--states=all", "--jobs=" + ",".join(ids),
                 "--format=%F|%K|%T"])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}  # none of them is known any more
        raise SlurmError(f"squeue failed: {proc.stderr.strip()}")
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        array_job, task, state = parts
        states[array_job if task in ("N/A", "") else f"{array_job}_{task}"] = state
    return states


def cancel(job_ids: Iterable[str], signal: str | None = None) -> None:
    """``scancel`` the given jobs or tasks.

    With ``signal`` (e.g. ``"USR1"``) the jobs are only signalled: the batch shell gets it
    (``--batch``) and forwards it to the worker, which stops cleanly and releases its lease.
    """
    ids = [str(j) for j in job_ids]
    if not ids:
        return
    cmd = ["scancel", *(["--batch", f"--signal={signal}"] if signal else []), *ids]
    proc = _run(cmd)
    if proc.returncode != 0:
        raise SlurmError(f"scancel failed: {proc.stderr.strip()}")
