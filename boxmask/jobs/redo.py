"""Redos: a run's masks made again for chosen boxes, applied to the run when it is merged.

A redo is a conversion of its own inside the run folder (``boxmask redo``,
``boxmask.quality.redo`` chooses the boxes)::

    <run>/redo/<name>/
      redo.json          {"name", "sequence", "created", "run_plan_id", "selected", "criteria",
                         "engine", "inside_point"}: written once, when the redo is made
      selection.jsonl    one line per image with chosen boxes: {"record": the run's image record
                         with only those boxes, "reasons": {box_id: [why it was chosen]}}
      plan.json shards/ state/ masks.jsonl errors.jsonl manifest.json
                         a boxmask conversion of selection.jsonl (input format ``records``, no
                         output format: its masks live in its state/results only), resumable as any

The run's own files are never touched by the redo's conversion. A redo applies only to the
conversion it was made for (``run_plan_id``: the run's ``plan_id``; planning the run again with
``--force`` leaves its redos unused). When the run is merged
(``boxmask.jobs.merge``), the masks of every *complete* redo replace the run's masks of the same
``(image_id, box_id)``, redo after redo in creation order (``sequence``); a box the redo could
not segment (an error, or an image whose decoded size changed) keeps its mask. Every output
format and the sidecar then hold the replacing masks; a replaced mask's sidecar line names its
``redo``, its engine and inside-point policy, and keeps ``history``: its earlier versions, oldest
first, each ``{"version", "redo" (null for the run's own), "engine", "inside_policy", "score",
"flags", "mask_xyxy", "rle_sha256" (``rle_sha256``), "replaced_by", "replaced_at"}``.

Per-image files (PNGs) of the images with replaced masks are written again in the run's format
folders, and the done marker of their shard is brought up to date (``files_sha256`` of the files
as they now are, with ``redo``: the redos applied, the images rewritten, a digest of the
replacing masks and the checksum before any redo), so that ``merge --verify`` and resumed
workers find the files as recorded. Re-merging rewrites nothing when the replacing masks have not
changed; a redo removed from ``redo/`` gives the images it had changed their run masks back.
Merging is idempotent: the same redos give the same bytes. Should merge be killed between
rewriting an image's files and updating its shard's marker, the next merge rewrites them again
(a ``merge --verify`` in between would convert that shard again instead).

Replacing masks are held in memory while merging: one RLE per redone box.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import masks as masklib
from ..hashing import sha256_file
from ..labels import LabelMap
from ..records import ImageResult, MaskResult
from ..safepath import UnsafePathError
from ..writers import create_writer
from .job import Job
from .layout import JobLayout
from .protocol import (
    NoPlanError,
    Plan,
    iter_results,
    read_done_marker,
    rewrite_done_marker,
    scan_done_results,
)

log = logging.getLogger(__name__)

REDO_DIR = "redo"
INFO_FILE = "redo.json"
SELECTION_FILE = "selection.jsonl"

MaskKey = tuple[str, str]
"""``(image_id, box_id)``."""
Replacements = dict[MaskKey, list[tuple[dict[str, Any], MaskResult, list[int | None]]]]
"""Per mask, the replacing masks in the order they apply, each with its redo's info and the
``[height, width]`` of the image it was made on."""


def redo_root(run_dir: str | Path) -> Path:
    return JobLayout(run_dir).root / REDO_DIR


def list_redos(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``redo.json`` of every redo of the run, in creation order, each with ``dir``."""
    root = redo_root(run_dir)
    out = []
    for info_file in sorted(root.glob(f"*/{INFO_FILE}")) if root.is_dir() else []:
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring %s: %s", info_file, e)
            continue
        out.append({**info, "dir": str(info_file.parent)})
    return sorted(out, key=lambda i: (int(i.get("sequence", 0)), str(i.get("name"))))


def completed_results(redo_dir: str | Path) -> list[Path] | None:
    """The results files of a redo's conversion when every shard is done and matches its
    marker (sha256), in plan order; None while it is unfinished (or damaged)."""
    try:
        job = Job.open(redo_dir)
    except NoPlanError:
        return None
    return intact_results_files(job)


def intact_results_files(job: Job) -> list[Path] | None:
    """The results file of every shard of ``job`` in plan order, each named by a done marker of
    the job's plan and matching its sha256; None when a shard has none."""
    paths = []
    for shard in job.plan.shards:
        marker = job.done_marker(shard.id)
        path = job.layout.results_dir / (marker.results if marker else "")
        if marker is None or not path.is_file() or sha256_file(path) != marker.results_sha256:
            return None
        paths.append(path)
    return paths


def load_replacements(run_dir: str | Path, before: int | None = None) -> tuple[
        Replacements, list[dict[str, Any]]]:
    """``(replacements, redos applied)`` from the run's complete redos (those of ``sequence``
    below ``before`` only, when given). Each applied redo's info gets ``masks`` (how many masks
    it holds)."""
    out: Replacements = {}
    applied = []
    try:
        run_plan_id: str | None = Job.open(run_dir).plan_id
    except NoPlanError:
        run_plan_id = None
    for info in list_redos(run_dir):
        if before is not None and int(info.get("sequence", 0)) >= before:
            continue
        if info.get("run_plan_id") != run_plan_id:
            log.warning("redo %s was made for another conversion in %s (planned again since); "
                        "its masks are not applied", info.get("name"), run_dir)
            continue
        paths = completed_results(info["dir"])
        if paths is None:
            log.warning("redo %s is not complete (run `boxmask redo` again to finish it); "
                        "its masks are not applied", info.get("name"))
            continue
        about = {"name": info["name"], "created": info.get("created"),
                 "engine": (info.get("engine") or {}).get("name"),
                 "inside_policy": info.get("inside_point")}
        n = 0
        for r in iter_results(paths):
            for m in r.masks:
                out.setdefault((r.record.image_id, m.box_id), []).append(
                    (about, m, [r.height, r.width]))
                n += 1
        applied.append({**about, "masks": n})
    return out, applied


def rle_sha256(rle: dict[str, Any]) -> str:
    """SHA-256 of a COCO RLE's size and counts (``"h,w:counts"``), 16 hex digits."""
    h, w = rle["size"]
    return hashlib.sha256(f"{h},{w}:{rle['counts']}".encode()).hexdigest()[:16]


def _version(mask: MaskResult, engine: str | None, policy: str | None, by: dict[str, Any],
             number: int) -> dict[str, Any]:
    origin = mask.origin or {}
    return {"version": number, "redo": origin.get("redo"),
            "engine": origin.get("engine", engine),
            "inside_policy": origin.get("inside_policy", policy),
            "score": round(float(mask.score), 6), "flags": list(mask.metrics.get("flags") or []),
            "mask_xyxy": (None if (b := masklib.rle_box(mask.rle)) is None
                          else [int(v) for v in b]),
            "rle_sha256": rle_sha256(mask.rle), "replaced_by": by["name"],
            "replaced_at": by.get("created")}


def apply(result: ImageResult, replacements: Replacements, engine: str | None,
          policy: str | None) -> tuple[ImageResult, int]:
    """``result`` with its masks replaced as ``replacements`` say; and how many were replaced.

    ``engine`` / ``policy``: the run's engine and inside-point policy (recorded in the history
    of a mask the run made). A replacing mask whose image size differs from the run's is not
    applied (the image changed since the run)."""
    count = 0
    masks = []
    for m in result.masks:
        for about, new, size in replacements.get((result.record.image_id, m.box_id), ()):
            if size != [result.height, result.width] or list(new.rle["size"]) != size:
                log.warning("redo %s: image %s is %s now, %s in the run; mask of box %s not "
                            "replaced", about["name"], result.record.image_id, size,
                            [result.height, result.width], m.box_id)
                continue
            history = [*m.history, _version(m, engine, policy, about, len(m.history))]
            m = replace(new, history=history,
                        origin={"redo": about["name"], "engine": about["engine"],
                                "inside_policy": about["inside_policy"]})
            count += 1
        masks.append(m)
    result.masks = masks
    return result, count


def redone_results(paths: Sequence[Path], replacements: Replacements, engine: str | None,
                   policy: str | None) -> Callable[[], Iterator[ImageResult]]:
    """A results factory over the run's results files with the replacements applied."""
    def results() -> Iterator[ImageResult]:
        for r in iter_results(paths):
            yield apply(r, replacements, engine, policy)[0] if replacements else r
    return results


def run_results(run_dir: str | Path, paths: Sequence[Path], plan: Plan,
                before: int | None = None) -> Callable[[], Iterator[ImageResult]]:
    """The run's results as merged: its results files (``paths``) with its complete redos
    applied (only those made before the redo of sequence ``before``, when given)."""
    replacements, _ = load_replacements(run_dir, before)
    engine, policy = run_engine(plan)
    return redone_results(paths, replacements, engine, policy)


def run_engine(plan: Plan) -> tuple[str | None, str | None]:
    """The run's engine name and inside-point policy, as the sidecar records them."""
    return plan.engine_name, plan.settings.inside_point


def apply_redos(job: Job, paths: Sequence[Path]) -> tuple[
        Callable[[], Iterator[ImageResult]], list[dict[str, Any]]]:
    """Bring the run's per-image files and done markers in line with its redos (see the module
    docstring); return the results factory for the merge and the redos applied.

    ``paths``: the verified results files of the done shards (``state/results/<shard>.*``).
    """
    layout = job.layout
    replacements, applied = load_replacements(layout.root)
    engine, policy = run_engine(job.plan)
    results = redone_results(paths, replacements, engine, policy)
    settings = job.settings
    labels = LabelMap.load(layout.labels) if layout.labels.exists() else LabelMap()
    writers = None
    for path in paths:
        sid = int(path.name.split(".", 1)[0])
        marker = read_done_marker(layout, sid)
        if marker is None:
            raise ValueError(f"shard {sid}: its done marker is unreadable")
        before = marker.redo or {}
        if not replacements and not before:
            continue
        changed: list[ImageResult] = []
        names: list[str] = []
        redone = set()
        digest = hashlib.sha256()
        rewritten_before = set(before.get("images", ()))
        for r in iter_results([path]):
            r, n = apply(r, replacements, engine, policy)
            if n:
                redone.add(r.record.image_id)
                names += [m.origin["redo"] for m in r.masks
                          if m.origin and m.origin["redo"] not in names]
                for m in r.masks:
                    if m.origin:
                        digest.update(f"{r.record.image_id}\t{m.box_id}\t"
                                      f"{rle_sha256(m.rle)}\n".encode())
            if n or r.record.image_id in rewritten_before:
                changed.append(r)
        state: dict[str, Any] = {"applied": sorted(names), "images": sorted(redone),
                                 "masks_sha256": digest.hexdigest()[:16] if redone else None}
        if {k: before.get(k) for k in state} == state or (not before and not redone):
            continue
        if writers is None:
            writers = [create_writer(f, layout.root, labels) for f in settings.formats]
        for r in changed:
            write_images(r, writers)
        scan = scan_done_results(path, layout.root)
        original = before.get("files_sha256_before", marker.files_sha256)
        rewrite_done_marker(layout, replace(
            marker, files_sha256=scan["files_sha256"],
            redo={**state, "files_sha256_before": original} if redone else None))
        log.info("shard %d: per-image files of %d images written again for redos %s", sid,
                 len(changed), ", ".join(state["applied"]) or "(none)")
    return results, applied


def write_images(result: ImageResult, writers: Sequence[Any]) -> None:
    """Write the per-image files of ``result`` in every format (``writers``), as the worker
    writes them; an image without a decoded size has none. A path a writer refuses as unsafe
    is logged and skipped: the run recorded it as a write error already."""
    if result.width is None:
        return
    for writer in writers:
        try:
            writer.write_image(result)
        except UnsafePathError as e:
            log.warning("no %s files for %r: %s", writer.name, result.record.image_id, e)
