"""What the job tests share: the bundled ILSVRC-LOC sample as a job, `python -m boxmask` in a
child process, and the output files that two runs must agree on byte for byte.

Imported as ``from jobs_support import ...``: pytest puts ``tests/`` on ``sys.path`` (rootdir
``prepend`` import mode, ``tests/`` has no ``__init__.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from boxmask.api import convert, prepare_plan
from boxmask.jobs.plan import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"
"""50 real ILSVRC-LOC images (82 boxes) of class tench."""
FORMATS = ["pixel-imagenet", "coco", "openimages"]
SKIP = {"state", "shards", "plan.json", "plan.lock", "manifest.json", "logs"}
"""Top-level entries of an output directory that are job state, not conversion output."""


def sample_settings(shard_size: int, **overrides: Any) -> Settings:
    """Settings that convert the sample with the box engine into every format, in shards of
    ``shard_size`` images; ``overrides`` set any other field (engine, limit, formats, ...)."""
    s = Settings(input_format="ilsvrc-loc", input=str(SAMPLE), formats=list(FORMATS), engine="box",
                 shard_size=shard_size)
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


def plan_into(out: Path, settings: Settings, force: bool = False) -> dict:
    """Plan ``settings`` into ``out`` (as ``boxmask plan`` does) and return the plan."""
    plan, engine = prepare_plan(settings, out, force=force)
    engine.close()
    return plan


def convert_once(out: Path, settings: Settings) -> Path:
    """A complete single-process conversion into ``out``: the reference that resumed, concurrent
    and distributed runs of the same settings must equal."""
    assert convert(settings, out, progress=False)["complete"]
    return out


def output_files(root: Path) -> dict[str, bytes]:
    """Every output file (formats, sidecar, labels) by relative path; hidden files included."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in SKIP}


def boxmask_command(*args: str) -> list[str]:
    """``python -m boxmask ARGS`` with the interpreter that runs the tests."""
    return [sys.executable, "-m", "boxmask", *args]


def start_boxmask(*args: str, **popen: Any) -> subprocess.Popen:
    """Start ``python -m boxmask ARGS`` in the repository root (so it runs this checkout), its
    stderr piped as text; ``popen`` adds ``subprocess.Popen`` options."""
    return subprocess.Popen(boxmask_command(*args), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            **popen)


def run_boxmask(*args: str, **run: Any) -> subprocess.CompletedProcess:
    """Run ``python -m boxmask ARGS`` in the repository root to its end, stdout and stderr
    captured as text; ``run`` adds ``subprocess.run`` options (``check``, ``timeout``, ...)."""
    return subprocess.run(boxmask_command(*args), cwd=ROOT, capture_output=True, text=True,
                          **run)


def start_worker(out: Path, *args: str) -> subprocess.Popen:
    """A quiet ``boxmask work OUT`` process without progress bars; ``args`` are more options."""
    return start_boxmask("-q", "work", str(out), "--no-progress", *args)


def lease_taken_by_an_ended_process(path: Path, worker_id: str) -> None:
    """Take the lease ``path`` as ``worker_id`` in a child process that then ends without
    releasing it, as a killed worker leaves its lease."""
    code = ("import sys; from pathlib import Path; from boxmask.jobs.lease import try_acquire; "
            f"assert try_acquire(Path(sys.argv[1]), {worker_id!r}, 600) is not None")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)
