"""A fault harness for the job system: ``convert`` -> a kill at a random moment -> a plain re-run,
then checks that nothing was lost, duplicated or left behind.

Shared by ``tests/jobs/test_faults_harness.py`` (a short run in CI) and
``benchmarks/bench_faults.py`` (hundreds of trials). Each trial converts a tiny COCO dataset
(small images cut from the bundled ILSVRC-LOC sample, GrabCut engine, several shards) with
``boxmask convert --workers N`` in a new process group, and stops it:

* kinds: ``sigkill-group`` (the whole process group, as a node loss or ``kill -9`` of a job),
  ``sigkill-worker`` (one worker process, as the out-of-memory killer), ``sigterm`` (to the group,
  as a scheduler's cancel) and ``sigint`` (to the group, as Ctrl-C);
* moments: ``planning`` (a random delay after start), ``leased`` (a shard lease exists),
  ``writing`` (results are being written), ``merge`` (the merge lock is held) and ``after-merge``
  (the manifest exists), each followed by a random delay of up to ``jitter_s``.

A trial may repeat convert -> kill up to three times (the same kind at the same moment: several
pre-emptions of a job on the same images) before the re-run. After each kill it waits for the
run's processes to end; then it runs the same command again and checks: the
re-run exits 0; every output file equals the uninterrupted run byte for byte (``errors.jsonl``
included, so it holds only the input's own errors); every box appears once in the sidecar; no
temporary file, lease or superseded results file remains.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"
KINDS = ("sigkill-group", "sigkill-worker", "sigterm", "sigint")
MOMENTS = ("planning", "leased", "writing", "merge", "after-merge")
PHASES = ("starting", "planning", "planned", "leased", "writing", "merge", "after-merge")
SKIP = {"state", "shards", "plan.json", "plan.lock", "manifest.json", "logs"}
"""Top-level entries of an output directory that are job state, not conversion output."""


def make_tiny_coco(folder: Path, n_images: int = 8, side: int = 64) -> tuple[Path, Path]:
    """A COCO dataset of ``n_images`` images, each the first box of a sample image cut out with
    a margin and scaled to ``side`` pixels on its longer side; returns ``(json, images root)``."""
    import cv2

    from boxmask.readers import open_reader

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tench"}]}
    reader = open_reader("ilsvrc-loc", SAMPLE)
    for record in reader:
        if len(coco["images"]) == n_images:
            break
        if not getattr(record, "boxes", None):
            continue
        rgb = cv2.imread(str(reader.images_root / record.image_path))
        h, w = rgb.shape[:2]
        sx = w / record.width if record.width else 1.0  # boxes are in the declared size
        sy = h / record.height if record.height else 1.0
        bx = record.boxes[0].xyxy
        x0, y0 = int(bx[0] * sx), int(bx[1] * sy)
        x1, y1 = min(int(bx[2] * sx), w - 1), min(int(bx[3] * sy), h - 1)
        mx, my = (x1 - x0) // 4 + 2, (y1 - y0) // 4 + 2
        cx0, cy0, cx1, cy1 = max(x0 - mx, 0), max(y0 - my, 0), min(x1 + mx, w - 1), min(y1 + my,
                                                                                        h - 1)
        crop = rgb[cy0:cy1 + 1, cx0:cx1 + 1]
        scale = side / max(crop.shape[:2])
        small = cv2.resize(crop, (max(round(crop.shape[1] * scale), 8),
                                  max(round(crop.shape[0] * scale), 8)),
                           interpolation=cv2.INTER_AREA)
        i = len(coco["images"]) + 1
        name = f"img{i:03d}.png"
        cv2.imwrite(str(images / name), small)
        sh, sw = small.shape[:2]
        bx0, by0 = (x0 - cx0) * scale, (y0 - cy0) * scale
        bw, bh = (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale
        coco["images"].append({"id": i, "file_name": name, "width": sw, "height": sh})
        bbox = [round(bx0, 1), round(by0, 1), round(min(bw, sw - bx0), 1),
                round(min(bh, sh - by0), 1)]
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                                    "bbox": bbox})
    ann = folder / "instances.json"
    ann.write_text(json.dumps(coco))
    return ann, images


def convert_command(ann: Path, images: Path, out: Path, workers: int = 2,
                    shard_size: int = 2) -> list[str]:
    return [sys.executable, "-m", "boxmask", "-q", "convert", "--source", "coco", "--input",
            str(ann), "--images-root", str(images), "--engine", "grabcut", "--format", "coco",
            "--format", "pixel-imagenet", "--shard-size", str(shard_size), "--workers",
            str(workers), "--no-progress", "--output", str(out)]


def child_env() -> dict[str, str]:
    """The environment of the boxmask processes: this checkout first on ``PYTHONPATH``."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def output_files(root: Path) -> dict[str, bytes]:
    """Every output file (formats, sidecar, errors, labels) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in SKIP}


def reference_run(ann: Path, images: Path, out: Path, workers: int = 2) -> Path:
    """The uninterrupted conversion every trial must equal."""
    subprocess.run(convert_command(ann, images, out, workers), check=True, env=child_env(),
                   capture_output=True, timeout=600)
    return out


# -- watching a run -----------------------------------------------------------------------------

def phase(out: Path) -> str:
    """How far a conversion in ``out`` has got (one of ``PHASES``), from its files alone."""
    if (out / "manifest.json").exists():
        return "after-merge"
    if (out / "state" / "merge.lease").exists():
        return "merge"
    if not (out / "plan.json").exists():
        return "planning" if out.exists() else "starting"
    results = out / "state" / "results"
    if results.is_dir() and any(p.stat().st_size for p in results.glob("*.jsonl")):
        return "writing"
    leases = out / "state" / "leases"
    if leases.is_dir() and any(leases.glob("*.lease")):
        return "leased"
    return "planned"


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` is alive (zombies do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def worker_pids(launcher: int) -> list[int]:
    """The live child processes of the launcher (its workers)."""
    try:
        with open(f"/proc/{launcher}/task/{launcher}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def wait_for_moment(out: Path, proc: subprocess.Popen, moment: str, rng: random.Random,
                    timeout_s: float = 120.0) -> None:
    """Return once the run reached ``moment`` (or ended)."""
    if moment == "planning":
        time.sleep(rng.uniform(0.0, 1.5))
        return
    target = PHASES.index(moment)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if PHASES.index(phase(out)) >= target:
            return
        time.sleep(0.003)


# -- a trial ------------------------------------------------------------------------------------

@dataclass
class Trial:
    kind: str
    moment: str
    reached: str = ""
    """The phase the run was in when the (last) kill was sent."""
    kills: int = 1
    """Rounds of convert -> kill before the re-run."""
    first_exit: int | None = None
    rerun_exit: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rerun_stderr: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def kill(proc: subprocess.Popen, kind: str, rng: random.Random) -> None:
    try:
        if kind == "sigkill-group":
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "sigterm":
            os.killpg(proc.pid, signal.SIGTERM)
        elif kind == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
        elif kind == "sigkill-worker":
            pids = worker_pids(proc.pid)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
        else:
            raise ValueError(kind)
    except ProcessLookupError:
        pass


def check_output(out: Path, reference: Path) -> list[str]:
    """What is wrong with a finished conversion in ``out`` compared with ``reference``."""
    from boxmask.atomic import is_temp

    problems = []
    ours, theirs = output_files(out), output_files(reference)
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        problems.append(f"outputs differ from the uninterrupted run: {differ[:5]}")
    if (out / "errors.jsonl").read_bytes() != (reference / "errors.jsonl").read_bytes():
        problems.append("errors.jsonl differs from the input's own errors")
    sidecar = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    keys = [(m["image_id"], m["box_id"]) for m in sidecar]
    planned = json.loads((out / "plan.json").read_text())["totals"]["boxes"]
    if len(keys) != len(set(keys)) or len(keys) != planned:
        problems.append(f"{len(keys)} sidecar lines, {len(set(keys))} distinct boxes, "
                        f"{planned} planned")
    temps = [p.relative_to(out).as_posix() for p in out.rglob("*") if is_temp(p)]
    if temps:
        problems.append(f"temporary files left: {temps[:5]}")
    state = out / "state"
    leases = sorted(p.name for p in (state / "leases").glob("*")) if state.is_dir() else []
    if leases:
        problems.append(f"leases left: {leases[:5]}")
    named = {json.loads(p.read_text())["results"] for p in (state / "done").glob("*.json")}
    extra = sorted(p.name for p in (state / "results").iterdir() if p.name not in named)
    if extra:
        problems.append(f"results files left besides the done shards': {extra[:5]}")
    return problems


def run_trial(ann: Path, images: Path, reference: Path, out: Path, kind: str, moment: str,
              rng: random.Random, workers: int = 2, jitter_s: float = 0.05,
              kills: int = 1) -> Trial:
    """One trial into the fresh folder ``out``: ``kills`` rounds of convert -> kill (the same
    kind at the same moment each round, e.g. three pre-emptions of the whole job while it is on
    the same images), then a plain re-run, checked against ``reference``."""
    trial = Trial(kind, moment, kills=kills)
    started = time.monotonic()
    cmd = convert_command(ann, images, out, workers)
    env = child_env()
    for _ in range(kills):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_moment(out, proc, moment, rng)
            time.sleep(rng.uniform(0.0, jitter_s))
            trial.reached = phase(out)
            kill(proc, kind, rng)
            try:
                trial.first_exit = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                trial.problems.append("an interrupted run did not end within 180 s")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            deadline = time.monotonic() + 60
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    trial.rerun_exit = rerun.returncode
    trial.rerun_stderr = rerun.stderr[-4000:]
    if rerun.returncode != 0:
        trial.problems.append(f"the re-run exited {rerun.returncode}")
    else:
        trial.problems += check_output(out, reference)
    trial.seconds = round(time.monotonic() - started, 2)
    return trial


def plan_trials(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (kind, moment) pairs: every combination in turn (shuffled), then again."""
    combos = [(k, m) for k in KINDS for m in MOMENTS]
    out: list[tuple[str, str]] = []
    while len(out) < n:
        rng.shuffle(combos)
        out += combos
    return out[:n]


def summarize(trials: list[Trial]) -> dict:
    """Counts of trials and failures, overall and by kind, moment and phase reached."""
    def by(key: str) -> dict:
        out: dict[str, list[int]] = {}
        for t in trials:
            c = out.setdefault(str(getattr(t, key)), [0, 0])
            c[0] += 1
            c[1] += not t.ok
        return {k: {"trials": v[0], "failures": v[1]} for k, v in sorted(out.items())}

    return {"trials": len(trials), "failures": sum(not t.ok for t in trials),
            "by_kind": by("kind"), "by_moment": by("moment"), "by_phase_reached": by("reached"),
            "by_kills": by("kills"),
            "seconds_per_trial": round(sum(t.seconds for t in trials) / max(len(trials), 1), 2)}
