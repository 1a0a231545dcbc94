"""The Python API behind the command line: plan, convert, segment one image.

``convert`` = plan (or resume an existing plan) + workers + merge. Re-running it on the same output
directory with the same settings resumes where it stopped; other settings are refused unless
``force`` discards the earlier conversion. ``boxmask.pipeline`` builds the settings from a
pipeline file and options; ``segment_file`` segments one box of one image file into a mask PNG.

The network weights an engine loads when none are named are chosen here (``default_weights``),
for conversions, redos and single images alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import boxes as B
from .atomic import atomic_write_bytes
from .engines import NETWORK_ENGINES, create_engine
from .engines.base import Engine, Prediction, SegmentRequest
from .exitcodes import (  # noqa: F401 - re-exported for API users
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_STOPPED,
    EXIT_USAGE,
    job_exit,
    workers_exit,
)
from .jobs.job import Job, JobLike
from .jobs.merge import merge
from .jobs.plan import Settings, open_job, resolve_settings
from .jobs.progress import Progress
from .jobs.status import job_status
from .jobs.worker import Worker, WorkerReport
from .masks import encode_binary_png
from .pipeline import engine_options
from .points import create_policy
from .records import BoxXYXY, Click
from .threads import set_threads
from .weights import DEFAULT_REFINEMENT_WEIGHTS, DEFAULT_WEIGHTS

log = logging.getLogger(__name__)

U2NET_WEIGHTS = "u2net"
"""Registry name of the U²-Net weights that ``u2net`` and ``fused`` load when none are named."""


class MaskWriteError(OSError):
    """A mask could not be encoded as a PNG or written to its file (the message names the file)."""


def default_weights(engine: str, *, refining: bool = False) -> str | None:
    """Registry name of the weights ``engine`` loads when none are named: for ``iog`` the
    released IOG checkpoint, or its refinement checkpoint when ``refining`` (the request has
    refinement clicks); None for the other engines (``u2net`` and ``fused`` load
    ``U2NET_WEIGHTS`` by themselves; ``grabcut`` and ``box`` take no weights)."""
    if engine != "iog":
        return None
    return DEFAULT_REFINEMENT_WEIGHTS if refining else DEFAULT_WEIGHTS


def pick_engine_name(name: str) -> str:
    """``auto``: ``iog`` when the default IOG checkpoint is in the weights cache, else ``fused``
    when the U²-Net weights are, else ``grabcut`` (which needs none)."""
    if name != "auto":
        return name
    try:
        from .weights import weights_path

        for engine, weights in (("iog", DEFAULT_WEIGHTS), ("fused", U2NET_WEIGHTS)):
            if weights_path(weights).exists():
                return engine
    except Exception:  # no registry or unreadable cache: fall back to the weight-free engine
        pass
    return "grabcut"


def prepare_job(settings: Settings, out_dir: str | Path, *, force: bool = False,
                engine: Engine | None = None) -> tuple[Job, Engine]:
    """Plan ``settings`` into ``out_dir``, or check an existing plan against them.

    Returns the job (``boxmask.jobs.job.Job``: layout and plan) and the engine built for it
    (reuse it to avoid loading weights twice). Safe to call from several launchers at once: one
    plans, the others resume its plan. Raises ``PlanMismatchError`` when the directory holds a
    conversion with other settings (or of another boxmask version) and ``force`` is not given.
    """
    settings = resolve_settings(settings)
    if engine is None:
        engine = create_engine(settings.engine, **settings.engine_options)
    try:
        job = open_job(settings, out_dir, engine.describe(), force=force, resolved=True)
    except BaseException:
        engine.close()
        raise
    return job, engine


def prepare_plan(settings: Settings, out_dir: str | Path, *, force: bool = False,
                 engine: Engine | None = None) -> tuple[dict[str, Any], Engine]:
    """``prepare_job`` with the plan as ``plan.json``'s JSON dict."""
    job, engine = prepare_job(settings, out_dir, force=force, engine=engine)
    return job.plan.to_json(), engine


def _reopen(job: Job, retry_failed: bool) -> None:
    """Re-open the shards earlier versions marked failed; with ``retry_failed`` also the done
    shards that skipped items (``boxmask.jobs.deaths``)."""
    from .jobs.deaths import reopen_legacy_failed, retry_skipped

    reopened = retry_skipped(job) if retry_failed else reopen_legacy_failed(job)
    if reopened:
        log.info("re-opened %d shard(s) to convert their skipped items again", len(reopened))


def work(job: JobLike, *, engine: Engine | None = None, progress: bool = True,
         threads: int | None = None, retry_failed: bool = False,
         **options: Any) -> WorkerReport:
    """Run one worker of ``job`` (a ``boxmask.jobs.job.Job`` or its output directory) in this
    process until the job has no shard left (or a signal stops it).

    ``options`` go to ``boxmask.jobs.worker.Worker`` (``worker_id``, ``engine_overrides``,
    ``lease_timeout_s``, ``max_attempts``, ``wait_for_others``, ...) plus ``max_shards``.
    ``retry_failed`` converts again the items skipped after repeated worker deaths
    (``boxmask.jobs.deaths``); shards earlier versions marked failed are re-opened in any case.
    """
    if threads:
        set_threads(threads)
    job = Job.of(job)
    _reopen(job, retry_failed)
    status = job_status(job)
    bar = Progress(status["items"]["total"], status["items"]["done"], enabled=progress)
    max_shards = options.pop("max_shards", None)
    worker = Worker(job, progress=bar, **options)
    if engine is not None:
        worker.use_engine(engine)
    try:
        return worker.run(max_shards=max_shards)
    finally:
        bar.close()
        worker.close()


def convert(settings: Settings, out_dir: str | Path, *, workers: int | None = None,
            force: bool = False,
            progress: bool = True, lease_timeout_s: float | None = None,
            device: str | None = None, retry_failed: bool = False,
            copy_images: bool = False, write_tight_boxes: bool = False) -> dict[str, Any]:
    """Plan (or resume), convert with ``workers`` local workers, merge; return the summary.

    ``workers`` None: ``boxmask.jobs.local.default_workers`` (one single-threaded worker per
    core, up to the unfinished shards and one per 200 boxes, for GrabCut and U²-Net on the CPU;
    else one).

    ``copy_images``: the Open Images output's ``data/`` gets copies of the images, not links.
    ``write_tight_boxes``: also write the source annotations back with tight boxes
    (``tight-boxes/<source>/``, see ``boxmask.writers.tightboxes``).

    The summary is the manifest's counts plus ``exit_code`` (``EXIT_OK``, ``EXIT_PARTIAL`` when
    some items failed, among them items skipped because workers kept dying on them,
    ``EXIT_STOPPED`` when interrupted before the end, ``EXIT_FATAL`` when shards are left
    undone). ``retry_failed``: convert the skipped items of earlier runs again.
    """
    job, engine = prepare_job(settings, out_dir, force=force)
    worker_options: dict[str, Any] = {}
    if lease_timeout_s is not None:
        worker_options["lease_timeout_s"] = lease_timeout_s
    _reopen(job, retry_failed)
    stopped = False
    if workers is None:
        from .jobs.local import default_workers

        st = job_status(job)
        workers = default_workers(engine, st["shards"]["pending"] + st["shards"]["stale"],
                                  st["boxes"]["total"] - st["boxes"]["done_in_done_shards"])
    if workers <= 1:
        try:
            report = work(job, engine=engine, progress=progress,
                          engine_overrides={"device": device}, **worker_options)
        finally:
            engine.close()
        stopped = report.stopped
    else:
        engine.close()
        from .jobs.local import run_local_workers

        codes = run_local_workers(job, workers, progress=progress, device=device,
                                  lease_timeout_s=lease_timeout_s)
        stopped = workers_exit(codes) == EXIT_STOPPED
        if any(c not in (EXIT_OK, EXIT_PARTIAL, EXIT_STOPPED) for c in codes):
            log.error("worker exit codes: %s", codes)
    status = job_status(job)
    if not status["complete"]:
        return {"complete": False, "status": status,
                "exit_code": job_exit(complete=False, stopped=stopped, errors=0)}
    manifest = merge(job, copy_images=copy_images, write_tight_boxes=write_tight_boxes)
    counts = manifest["counts"]
    return {"complete": True, **counts, "seconds": manifest["conversion_seconds"],
            "exit_code": job_exit(complete=True, stopped=False, errors=counts["errors"])}


def split_clicks(clicks: list[Click]) -> tuple[Click | None, list[Click]]:
    """``(inside click, refinement clicks)``: the first positive user or inside click is the
    inside point, every other click refines the mask."""
    inside: Click | None = None
    extra: list[Click] = []
    for c in clicks:
        if c.positive and inside is None and c.kind in ("inside", "user"):
            inside = c
        else:
            extra.append(c)
    return inside, extra


def segment_image(image_rgb: np.ndarray, box_xyxy: tuple[int, int, int, int], *,
                  engine: Engine, inside_point: str = "center",
                  inside_options: dict[str, Any] | None = None,
                  clicks: list[Click] | None = None) -> Prediction:
    """Segment one box of one decoded image (``box_xyxy`` in the library convention).

    ``clicks``: an optional inside click (the first positive click is used as the inside point)
    and further refinement clicks, all in image pixels.
    """
    inside_click, extra = split_clicks(clicks or [])
    inside = (None if inside_click is None
              else np.array([[inside_click.x, inside_click.y]], dtype=np.float64))
    request = SegmentRequest(image=image_rgb, boxes=np.array([box_xyxy]), inside=inside,
                             extra_clicks=[extra] if extra else None)
    policy = create_policy(inside_point, **(inside_options or {}))
    return policy.segment(engine, [request])[0][0]


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write ``mask`` (``H x W``, non-zero = object) to ``path`` as a 1-bit greyscale PNG
    (``boxmask.masks.encode_binary_png``: OpenCV reads 0 / 255), atomically; return the path.
    Raises ``MaskWriteError`` when the mask cannot be encoded or the file cannot be written."""
    path = Path(path)
    try:
        data = encode_binary_png(mask)
    except ValueError as e:
        raise MaskWriteError(f"cannot encode the mask for {path}: {e}") from e
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise MaskWriteError(f"cannot write the mask to {path}: {e}") from e
    return path


def segment_file(image: str | Path, box_xyxy: Sequence[int], output: str | Path, *,
                 clicks: Sequence[Click] = (), engine: str = "auto",
                 weights: str | Path | None = None, device: str = "auto",
                 inside_point: str = "center",
                 inside_options: dict[str, Any] | None = None) -> Prediction:
    """Segment one box of the image file ``image`` and write its mask to ``output`` (a PNG, see
    ``write_mask_png``); return the prediction.

    ``box_xyxy``: ``(x0, y0, x1, y1)``, 0-based inclusive pixel indices of the decoded image
    (after its EXIF orientation). ``clicks`` as in ``segment_image``. ``engine`` ``auto``: see
    ``pick_engine_name``. ``weights``: a path or registry name, for the network engines only;
    default ``default_weights`` (for IOG with refinement clicks, the refinement checkpoint).
    ``device`` (auto, cpu, cuda, cuda:1) applies to the network engines.

    Raises ``boxmask.imageio.ImageDecodeError`` for an unreadable image, ``ValueError`` for a
    box outside the image or too small and for clicks the engine cannot use,
    ``boxmask.pipeline.PipelineError`` for weights given to an engine that takes none, and
    ``MaskWriteError`` when the PNG cannot be written.
    """
    from .imageio import decode_image

    decoded = decode_image(image)
    w, h = decoded.size
    if len(box_xyxy) != 4:
        raise ValueError(f"box {list(box_xyxy)} is not four pixel coordinates x0, y0, x1, y1")
    x0, y0, x1, y1 = box_xyxy
    checked = B.validate((x0, y0, x1, y1), w, h)
    if checked.error or checked.box is None:
        raise ValueError(checked.error or f"unusable box {list(box_xyxy)}")
    box: BoxXYXY = checked.box
    name = pick_engine_name(engine)
    refining = bool(split_clicks(list(clicks))[1])
    options = engine_options(name, weights=weights, refining=refining)
    if name in NETWORK_ENGINES:
        options["device"] = device
    eng = create_engine(name, **options)
    try:
        prediction = segment_image(decoded.rgb, box, engine=eng, inside_point=inside_point,
                                   inside_options=inside_options, clicks=list(clicks))
    finally:
        eng.close()
    write_mask_png(prediction.mask, output)
    return prediction


# ------------------------------------------------------------------------------ review

def sample(run_dir: str | Path, output: str | Path, **options: Any) -> Path:
    """Write the review gallery of a sample of a run's masks (``quality.gallery.sample_run``)."""
    from .quality.gallery import sample_run

    return sample_run(run_dir, output, **options)


def review_estimate(run_dir: str | Path, verdicts: str | Path,
                    sample_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Estimate the run's error rate from a review's ``verdicts.jsonl`` (``quality.review``).

    ``sample_dir``: the review report the verdicts were made on (``sample.jsonl``,
    ``sample_design.json``); default: the folder of ``verdicts`` when it holds ``sample.jsonl``.
    Writes ``<run>/review.json`` and, when ``sample_dir`` has an ``index.html``, writes that page
    again to show the estimate. Returns ``(path of review.json, its dict)``. Raises
    ``ValueError`` when the verdicts name another sample.
    """
    import json

    from .atomic import atomic_write_text
    from .jobs.layout import JobLayout
    from .quality.gallery import REVIEW_FILE, refresh_page
    from .quality.review import estimate, read_sample, read_verdicts

    verdicts = Path(verdicts)
    folder = Path(sample_dir) if sample_dir is not None else verdicts.parent
    if not (folder / "sample.jsonl").is_file():
        raise FileNotFoundError(f"no sample.jsonl in {folder}: pass the review report folder "
                                "the verdicts were made on")
    items, design, _ = read_sample(folder)
    lines, problems = read_verdicts(verdicts)
    other = {str(v.get("sample_id")) for v in lines.values()
             if v.get("sample_id") not in (None, design["sample_id"])}
    if other:
        raise ValueError(f"{verdicts} holds verdicts on another sample ({', '.join(sorted(other))})"
                         f" than {folder} ({design['sample_id']})")
    result = estimate(items, design, lines)
    result["problems"] = problems + result["problems"]
    result["run"] = str(run_dir)
    result["verdicts"] = str(verdicts)
    result["sample_dir"] = str(folder)
    out = JobLayout(Path(run_dir)).root / REVIEW_FILE
    atomic_write_text(out, json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if (folder / "index.html").is_file():
        refresh_page(folder, run_dir)
    return out, result


def export(run_dir: str | Path, output: str | Path, **options: Any) -> dict[str, Any]:
    """Write a release subset of a merged run (``quality.export.export``: formats, verdicts,
    sample_dir, min_score, drop_flags, copy_images, overwrite); return its export manifest."""
    from .quality.export import export as export_run

    return export_run(run_dir, output, **options)


def redo(run_dir: str | Path, request: Any, *, workers: int = 1, progress: bool = True,
         device: str | None = None, lease_timeout_s: float | None = None,
         copy_images: bool | None = None,
         write_tight_boxes: bool | None = None) -> dict[str, Any]:
    """Convert again the boxes of the merged run ``run_dir`` that ``request``
    (``quality.redo.RedoRequest``) chooses, as the resumable conversion ``<run>/redo/<name>/``,
    then merge the run so that the new masks replace the old ones (``jobs.redo``).

    Running it again with the same request resumes it. ``copy_images`` and
    ``write_tight_boxes`` (see ``convert``): default, as the run's last merge did. Returns
    ``{"name", "dir", "selected", "images", "problems", "complete", "redo": the redo
    conversion's summary, "run": the run's merge counts and "redos": the redos applied (when
    complete), "exit_code"}``. Raises ``quality.redo.RedoError`` (or ``ExportError``) when the
    redo cannot be made as asked.
    """
    import json

    from .jobs.layout import JobLayout
    from .jobs.plan import PlanMismatchError
    from .quality.redo import RedoError, prepare

    folder, settings, about = prepare(run_dir, request)
    try:
        summary = convert(settings, folder, workers=workers, progress=progress, device=device,
                          lease_timeout_s=lease_timeout_s)
    except PlanMismatchError as e:
        raise RedoError(f"redo {about['name']!r} was started with other settings; choose "
                        f"another --name ({e})") from None
    out = {**about, "dir": str(folder), "complete": summary["complete"], "redo": summary}
    if not summary["complete"]:
        return {**out, "exit_code": summary["exit_code"]}
    try:
        last = json.loads(JobLayout(run_dir).manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = {}
    outputs = last.get("outputs") or {}
    if write_tight_boxes is None:
        write_tight_boxes = "tight-boxes" in outputs
    if copy_images is None:
        copy_images = (outputs.get("openimages") or {}).get("images") == "copies"
    manifest = merge(run_dir, copy_images=copy_images, write_tight_boxes=write_tight_boxes)
    counts = manifest["counts"]
    return {**out, "run": counts, "redos": manifest.get("redos", []),
            "exit_code": job_exit(complete=True, stopped=False,
                                  errors=summary.get("errors", 0))}
