"""Choose the boxes of a merged run to convert again, and set up the redo's conversion.

A box is chosen when any of these holds for its current mask (the run's, or the one an earlier
redo put in its place); each is a *reason*:

* ``verdict:<v>``: a reviewer gave it verdict ``v`` (one of ``verdicts``, default ``bad``) in
  ``verdicts.jsonl``, checked as ``boxmask export`` checks them
  (``boxmask.quality.export.judged_masks``: a sample of another run is refused; a verdict on a
  mask that changed since the review is not applied);
* ``flag:<name>``: it carries one of ``flags`` (``boxmask.maskmetrics.FLAGS``);
* ``min_score``: its engine score is below ``min_score``.

``prepare`` writes ``<run>/redo/<name>/selection.jsonl`` (atomically) and ``redo.json``, and
returns the settings of the redo's conversion (``boxmask.jobs.redo`` describes the layout and
how merge applies it). The selection of a redo is computed from the run as it was before that
redo (with only the redos made before it applied), so the same command run again gives the same
selection and resumes; another selection under an existing name is refused.

The redo's conversion decodes images as the run did (same images root, EXIF policy, pixel
limit, smallest box side), so its masks have the run's image sizes; engine, engine options and
inside-point policy (and its options) are the redo's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..hashing import sha256_file
from ..jobs.protocol import Plan, iter_results
from ..jobs.redo import INFO_FILE, SELECTION_FILE, list_redos, redo_root, run_results
from ..jobs.settings import Settings
from ..maskmetrics import FLAGS
from ..readers.records import INPUT_FORMAT as RECORDS_FORMAT
from ..safepath import check_component
from .export import ExportError, judged_masks, merged_run
from .review import VERDICTS

log = logging.getLogger(__name__)

MaskKey = tuple[str, str]


class RedoError(ValueError):
    """The redo cannot be made as asked (nothing chosen, a name taken by another selection,
    verdicts of another run)."""


@dataclass
class RedoRequest:
    """What to convert again and how. ``engine_options`` / ``inside_options`` as for convert."""

    engine: str
    engine_options: dict[str, Any] = field(default_factory=dict)
    inside_point: str = "center"
    inside_options: dict[str, Any] = field(default_factory=dict)
    verdicts_file: str | None = None
    sample_dir: str | None = None
    verdicts: tuple[str, ...] = ("bad",)
    flags: tuple[str, ...] = ()
    min_score: float | None = None
    name: str | None = None

    def criteria(self) -> dict[str, Any]:
        """The selection criteria as ``redo.json`` records them (with the verdicts' sha256)."""
        return {"verdicts_file": self.verdicts_file,
                "verdicts_sha256": (None if self.verdicts_file is None
                                    else sha256_file(Path(self.verdicts_file))),
                "sample_dir": self.sample_dir, "verdicts": list(self.verdicts),
                "flags": list(self.flags), "min_score": self.min_score}

    def default_name(self) -> str:
        """``<engine>-<8 hex digits>`` of the criteria and settings: the same command gives
        the same name (and so resumes)."""
        key = json.dumps({"criteria": self.criteria(), "engine": self.engine,
                          "engine_options": self.engine_options,
                          "inside_point": self.inside_point,
                          "inside_options": self.inside_options}, sort_keys=True, default=str)
        return f"{self.engine}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def check_request(request: RedoRequest) -> None:
    if request.verdicts_file is None and not request.flags and request.min_score is None:
        raise RedoError("choose what to redo: --from verdicts.jsonl, --flag or --min-score")
    unknown = [v for v in request.verdicts if v not in VERDICTS]
    if unknown:
        raise RedoError(f"unknown verdicts {', '.join(unknown)}; choose from {', '.join(VERDICTS)}")
    unknown = [f for f in request.flags if f not in FLAGS]
    if unknown:
        raise RedoError(f"unknown flags {', '.join(unknown)}; choose from {', '.join(FLAGS)}")


def choose(results: Any, plan: Plan, request: RedoRequest) -> tuple[
        dict[MaskKey, list[str]], list[str]]:
    """``({(image_id, box_id): reasons}, problems)``: the masks of ``results`` (a results
    factory over the run as it stands before this redo) chosen by ``request``."""
    chosen: dict[MaskKey, list[str]] = {}
    problems: list[str] = []
    if request.verdicts_file is not None:
        try:
            judged, problems = judged_masks(request.verdicts_file, results, plan,
                                            request.sample_dir)
        except ExportError as e:
            raise RedoError(str(e)) from None
        for key, verdict in judged.items():
            if verdict in request.verdicts:
                chosen.setdefault(key, []).append(f"verdict:{verdict}")
    if request.flags or request.min_score is not None:
        for r in results():
            for m in r.masks:
                reasons = [f"flag:{f}" for f in request.flags
                           if f in (m.metrics.get("flags") or [])]
                if request.min_score is not None and float(m.score) < request.min_score:
                    reasons.append("min_score")
                if reasons:
                    chosen.setdefault((r.record.image_id, m.box_id), []).extend(reasons)
    return chosen, problems


def selection_lines(paths: Sequence[Path], chosen: dict[MaskKey, list[str]]) -> list[str]:
    """The lines of ``selection.jsonl``: per image with chosen boxes, in run order, its record
    with only those boxes (positions and ids kept; no skipped-box notes) and the reasons."""
    out = []
    for r in iter_results(list(paths)):
        record = r.record
        boxes = [b for b in record.boxes if (record.image_id, b.box_id) in chosen]
        if not boxes:
            continue
        record.boxes = boxes
        record.meta = {k: v for k, v in record.meta.items() if k != "skipped"}
        reasons = {b.box_id: chosen[(record.image_id, b.box_id)] for b in boxes}
        out.append(json.dumps({"record": record.to_json(), "reasons": reasons},
                              ensure_ascii=False, separators=(",", ":")) + "\n")
    return out


def prepare(run_dir: str | Path, request: RedoRequest) -> tuple[Path, Settings, dict[str, Any]]:
    """Choose the boxes and write the redo's ``selection.jsonl`` and ``redo.json`` (or check
    them against an existing redo of that name); return ``(redo folder, settings of its
    conversion, {"name", "selected", "images", "problems"})``.

    Raises ``RedoError`` (see the class) or ``ExportError`` when the run is not merged.
    """
    check_request(request)
    job, paths = merged_run(run_dir)
    run, plan = job.root, job.plan
    name = request.name or request.default_name()
    check_component(name, "redo name")
    folder = redo_root(run) / name
    earlier = {i["name"]: i for i in list_redos(run)}
    if name in earlier and earlier[name].get("run_plan_id") != plan.plan_id:
        raise RedoError(f"redo {name!r} was made for an earlier conversion in {run} (planned "
                        f"again since): remove {folder} or choose another --name")
    sequence = (int(earlier[name]["sequence"]) if name in earlier
                else 1 + max((int(i.get("sequence", 0)) for i in earlier.values()), default=0))
    chosen, problems = choose(run_results(run, paths, plan, before=sequence), plan, request)
    lines = selection_lines(paths, chosen)
    text = "".join(lines)
    selection = folder / SELECTION_FILE
    if selection.is_file():
        if selection.read_text(encoding="utf-8") != text:
            old = sum(1 for x in selection.read_text(encoding="utf-8").splitlines() if x)
            raise RedoError(f"redo {name!r} of {run} was made for another selection ({old} "
                            f"images; {len(lines)} now): choose another --name")
    elif not chosen:
        raise RedoError("no mask of the run matches the criteria: nothing to redo")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(selection, text)
    run_settings = plan.settings
    if name not in earlier:
        info = {"name": name, "sequence": sequence,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "run_plan_id": plan.plan_id, "selected": len(chosen),
                "images": len(lines), "criteria": request.criteria(),
                "engine": {"name": request.engine, "options": request.engine_options},
                "inside_point": request.inside_point,
                "inside_options": request.inside_options}
        atomic_write_text(folder / INFO_FILE, json.dumps(info, indent=1, ensure_ascii=False,
                                                        default=str) + "\n")
    settings = Settings(
        input_format=RECORDS_FORMAT, input=str(selection), formats=[],
        images_root=run_settings.images_root,
        reader_options={"labels": str(job.layout.labels)}
        if job.layout.labels.is_file() else {},
        engine=request.engine, engine_options=dict(request.engine_options),
        inside_point=request.inside_point, inside_options=dict(request.inside_options),
        exif=run_settings.exif, max_pixels=run_settings.max_pixels,
        min_box_side=run_settings.min_box_side, shard_size=run_settings.shard_size)
    return folder, settings, {"name": name, "selected": len(chosen), "images": len(lines),
                              "problems": problems}
