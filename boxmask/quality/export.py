"""Export: a release subset of a merged run, in any output format, with what was dropped and why.

A mask is dropped when any of these holds (each is a *reason*):

* ``verdict_bad``: a reviewer judged it ``bad`` in ``verdicts.jsonl`` (the review page's export);
* ``min_score``: its engine score is below ``min_score``;
* ``flag:<name>``: it carries one of ``drop_flags`` (``boxmask.quality.metrics.FLAGS``).

Everything else is written as merge writes it: the run's done shards' results (``state/results``,
checked against their done markers, with the masks of the run's redos in place of those they
replaced, ``boxmask.jobs.redo``) stream through the same format writers and the same sidecar
writer (``boxmask.jobs.merge.write_formats``), with the dropped masks left out of every image.
Kept masks are the run's own bytes (same RLE, score, clicks, metrics); an image whose masks were
all dropped stays in the output with no mask (as an image whose boxes all failed), and the run's
error records are kept as they are.

Written into a hidden folder next to ``output`` and renamed into place when complete, so an
interrupted export leaves no half-written release (only that hidden folder, which the next
export of the same ``output`` removes). ``output/export-manifest.json`` lists the criteria, the
counts per reason (a mask with several reasons counts under each) and ``problems`` (verdict lines
that could not be read or applied); ``output/dropped.jsonl`` has one line per dropped mask:
``{"image_id", "box_id", "label", "score", "flags", "reasons"}``.

Verdicts are matched to masks by ``(image_id, box_id)``. When the review report they were made
on is known (``sample_dir``, or the verdicts' folder when it holds ``sample.jsonl``), verdicts
made on another sample are refused, and a verdict whose mask has changed since the review (its
RLE differs from the sampled one, e.g. after a redo) is not applied and is listed in
``problems``. Verdicts on a sample drawn from another run (its ``plan_id``), or of which none
names a mask of the run, are refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_open, atomic_write_text
from ..hashing import sha256_file
from ..jobs.job import Job
from ..jobs.layout import JobLayout
from ..jobs.merge import write_formats
from ..jobs.protocol import NoPlanError, Plan, read_done_marker
from ..jobs.redo import run_results as redone_results
from ..jobs.redo import write_images
from ..labels import LabelMap
from ..records import ImageResult, MaskResult
from ..safepath import UnsafePathError
from ..writers import FORMATS, ResultsFactory, create_writer
from .metrics import FLAGS
from .review import read_sample, read_verdicts

log = logging.getLogger(__name__)

MANIFEST_FILE = "export-manifest.json"
DROPPED_FILE = "dropped.jsonl"

MaskKey = tuple[str, str]
"""``(image_id, box_id)``."""


class ExportError(ValueError):
    """The export cannot be made as asked (run not merged, verdicts of another run or sample)."""


@dataclass
class Criteria:
    """What to drop. ``bad``: the masks judged bad; ``min_score``: drop scores below it;
    ``drop_flags``: drop masks carrying any of these flags."""

    bad: set[MaskKey] = field(default_factory=set)
    min_score: float | None = None
    drop_flags: tuple[str, ...] = ()

    def reasons(self, image_id: str, mask: MaskResult) -> list[str]:
        out = []
        if (image_id, mask.box_id) in self.bad:
            out.append("verdict_bad")
        if self.min_score is not None and float(mask.score) < self.min_score:
            out.append("min_score")
        flags = mask.metrics.get("flags") or []
        out += [f"flag:{f}" for f in self.drop_flags if f in flags]
        return out


def merged_run(run_dir: str | Path) -> tuple[Job, list[Path]]:
    """``(job, results files in plan order)`` of a completely merged run.

    Raises ``ExportError`` when the run has no plan, was not merged completely, or a results file
    does not match its done marker (run ``boxmask merge`` first).
    """
    try:
        job = Job.open(run_dir)
    except NoPlanError:
        raise ExportError(f"{run_dir} has no plan.json: not a boxmask run") from None
    layout, plan = job.layout, job.plan
    try:
        manifest = json.loads(layout.manifest.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        manifest = {}
    if not manifest.get("complete"):
        raise ExportError(f"{run_dir} is not merged completely (manifest.json complete: false "
                          "or missing); finish and merge the run first")
    paths = []
    for shard in plan.shards:
        marker = read_done_marker(layout, shard.id)
        path = layout.results_dir / (marker.results if marker else "")
        if marker is None or not path.is_file() or sha256_file(path) != marker.results_sha256:
            raise ExportError(f"shard {shard.id} of {run_dir} has no intact results file; "
                              f"run `boxmask merge {run_dir}` first")
        paths.append(path)
    return job, paths


def _run_masks(results: ResultsFactory, wanted: set[MaskKey]) -> dict[MaskKey, dict[str, Any]]:
    """``{(image_id, box_id): {"label", "rle"}}`` of the run's masks among ``wanted`` (one
    streaming pass; only those are held)."""
    out = {}
    for r in results():
        for m in r.masks:
            key = (r.record.image_id, m.box_id)
            if key in wanted:
                out[key] = {"label": m.label, "rle": m.rle}
    return out


def bad_masks(verdicts_path: str | Path, results: ResultsFactory, plan: Plan,
              sample_dir: str | Path | None = None) -> tuple[set[MaskKey], list[str]]:
    """The masks judged ``bad`` in ``verdicts_path`` that are masks of the run, and the problems
    met (unreadable lines, verdicts not applied). See the module docstring for the checks.

    Raises ``ExportError`` when the verdicts belong to another sample or another run.
    """
    judged, problems = judged_masks(verdicts_path, results, plan, sample_dir)
    return {k for k, v in judged.items() if v == "bad"}, problems


def judged_masks(verdicts_path: str | Path, results: ResultsFactory, plan: Plan,
                 sample_dir: str | Path | None = None) -> tuple[dict[MaskKey, str], list[str]]:
    """``({(image_id, box_id): verdict}, problems)``: the verdicts of ``verdicts_path`` that
    apply to masks of the run as ``results`` has them (the run of ``plan``). A verdict is not
    applied (and is listed in ``problems``) when its mask is not in the run, has another label,
    or changed since it was sampled.

    Raises ``ExportError`` when the verdicts belong to another sample, or to another run: the
    sample records the ``plan_id`` of the run it was drawn from (reports written before it did
    are checked by their masks: none of the verdicts may name a mask of the run).
    """
    verdicts_path = Path(verdicts_path)
    lines, problems = read_verdicts(verdicts_path)
    folder = Path(sample_dir) if sample_dir is not None else verdicts_path.parent
    sampled: dict[int, dict[str, Any]] = {}
    if (folder / "sample.jsonl").is_file():
        items, design, _ = read_sample(folder)
        other = {v.get("sample_id") for v in lines.values()} - {None, design["sample_id"]}
        if other:
            raise ExportError(f"{verdicts_path} holds verdicts on another sample "
                              f"({', '.join(sorted(map(str, other)))}) than {folder} "
                              f"({design['sample_id']})")
        if design.get("plan_id") not in (None, plan.plan_id):
            raise ExportError(f"the review sample {folder} was drawn from another run (plan "
                              f"{design['plan_id']}, this run's is {plan.plan_id}): its "
                              "verdicts do not apply here")
        sampled = {int(i["sample_index"]): i for i in items}
    elif sample_dir is not None:
        raise ExportError(f"no sample.jsonl in {folder}")
    masks = _run_masks(results, {(str(v.get("image_id")), str(v.get("box_id")))
                                 for v in lines.values()})
    judged: dict[MaskKey, str] = {}
    matched = 0
    for k, v in sorted(lines.items()):
        key = (str(v.get("image_id")), str(v.get("box_id")))
        mask = masks.get(key)
        if mask is None:
            problems.append(f"sample_index {k}: image {key[0]} box {key[1]} is no mask of the run; "
                            "verdict not applied")
            continue
        if v.get("label") is not None and v.get("label") != mask["label"]:
            problems.append(f"sample_index {k}: label {v.get('label')} differs from the run's "
                            f"{mask['label']}; verdict not applied")
            continue
        item = sampled.get(k)
        if item is not None and (item.get("rle") or {}).get("counts") != mask["rle"]["counts"]:
            problems.append(f"sample_index {k}: image {key[0]} box {key[1]} changed since it "
                            "was reviewed; verdict not applied")
            continue
        matched += 1
        judged[key] = str(v.get("verdict"))
    if lines and not matched:
        raise ExportError(f"none of the {len(lines)} verdicts of {verdicts_path} names a mask of "
                          "this run as reviewed: verdicts of another run?")
    for p in problems:
        log.warning("%s", p)
    return judged, problems


def _kept(result: ImageResult, dropped: set[MaskKey]) -> ImageResult:
    result.masks = [m for m in result.masks if (result.record.image_id, m.box_id) not in dropped]
    return result


def _staging(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    for old in output.parent.glob(f".{output.name}.partial-*"):  # an interrupted export's
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))


def _put_in_place(stage: Path, output: Path, overwrite: bool) -> None:
    old = None
    if output.exists():
        if not overwrite:
            raise FileExistsError(f"{output} exists; pass overwrite to replace it")
        old = output.with_name(f".{output.name}.partial-old-{os.getpid()}")
        os.replace(output, old)
    os.replace(stage, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(run_dir: str | Path, output: str | Path, *, formats: Sequence[str] | None = None,
           verdicts: str | Path | None = None, sample_dir: str | Path | None = None,
           min_score: float | None = None, drop_flags: Sequence[str] = (),
           copy_images: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write the release subset of the merged run ``run_dir`` into ``output``; return its
    ``export-manifest.json`` dict.

    ``formats``: output formats (default: the run's); ``verdicts``: drop the masks judged bad;
    ``sample_dir``: the review report the verdicts were made on (default: the verdicts' folder
    when it holds ``sample.jsonl``); ``min_score``: drop masks scoring below it (score in
    [0, 1]); ``drop_flags``: drop masks with any of these flags; ``copy_images``: Open Images
    ``data/`` holds copies, not links; ``overwrite``: replace an existing ``output``.
    """
    run = JobLayout(run_dir).root
    output = Path(output).absolute()
    if output.resolve() == run.resolve():
        raise ExportError("the export folder must not be the run folder")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite (--overwrite) to replace it")
    unknown = [f for f in drop_flags if f not in FLAGS]
    if unknown:
        raise ExportError(f"unknown flags {', '.join(unknown)}; choose from {', '.join(FLAGS)}")
    job, paths = merged_run(run)
    plan = job.plan
    formats = list(formats if formats is not None else plan.settings.formats)
    bad_fmt = [f for f in formats if f not in FORMATS]
    if bad_fmt:
        raise ExportError(f"unknown formats {', '.join(bad_fmt)}; choose from {', '.join(FORMATS)}")
    run_results = redone_results(run, paths, plan)
    bad, problems = (bad_masks(verdicts, run_results, plan, sample_dir) if verdicts is not None
                     else (set(), []))
    criteria = Criteria(bad, min_score, tuple(drop_flags))
    labels_file = job.layout.labels
    labels = LabelMap.load(labels_file) if labels_file.exists() else LabelMap()
    images_root = plan.settings.images_root or "."
    stage = _staging(output)
    try:
        writers = [create_writer(f, stage, labels, copy_images=copy_images,
                                 images_root=images_root) for f in formats]
        dropped: set[MaskKey] = set()
        by_reason: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        with atomic_open(stage / DROPPED_FILE, "w") as f:
            for r in run_results():
                counts["images"] += 1
                counts["masks_in_run"] += len(r.masks)
                for m in r.masks:
                    reasons = criteria.reasons(r.record.image_id, m)
                    if not reasons:
                        continue
                    dropped.add((r.record.image_id, m.box_id))
                    by_reason.update(reasons)
                    f.write(json.dumps({"image_id": r.record.image_id, "box_id": m.box_id,
                                        "label": m.label, "score": round(float(m.score), 6),
                                        "flags": m.metrics.get("flags") or [],
                                        "reasons": reasons}, ensure_ascii=False) + "\n")
                write_images(_kept(r, dropped), writers)

        def results() -> Iterator[ImageResult]:
            for r in run_results():
                yield _with_files(_kept(r, dropped), writers, stage)

        files, outputs = write_formats(stage, results, labels, plan, formats,
                                       copy_images=copy_images)
        manifest: dict[str, Any] = {
            "boxmask_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run": str(run),
            "formats": formats,
            "criteria": {"verdicts": None if verdicts is None else str(verdicts),
                         "min_score": min_score, "drop_flags": list(drop_flags)},
            "counts": {"images": counts["images"], "masks_in_run": counts["masks_in_run"],
                       "masks_kept": counts["masks_in_run"] - len(dropped),
                       "masks_dropped": len(dropped)},
            "dropped_by_reason": dict(sorted(by_reason.items())),
            "dropped": DROPPED_FILE,
            "problems": problems,
            "files": sorted(files + [DROPPED_FILE, MANIFEST_FILE]),
            "outputs": outputs,
        }
        atomic_write_text(stage / MANIFEST_FILE, json.dumps(manifest, indent=1,
                                                            ensure_ascii=False) + "\n")
        _put_in_place(stage, output, overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("exported %d of %d masks to %s", manifest["counts"]["masks_kept"],
             counts["masks_in_run"], output)
    return manifest


def _with_files(result: ImageResult, writers: Sequence[Any], stage: Path) -> ImageResult:
    """``result`` with ``files`` naming the per-image files the export wrote for it (the
    sidecar's ``files``)."""
    files = []
    for writer in writers:
        for m in result.masks:
            try:
                rel = writer.mask_file(result, m)
            except UnsafePathError:
                continue
            if rel is not None and rel not in files and (stage / rel).is_file():
                files.append(rel)
    result.files = files
    return result
