"""Read the masks and errors of a run, finished or still in progress, as the same dicts.

A finished (merged) run holds ``masks.jsonl`` and ``errors.jsonl`` (``boxmask.writers.sidecar``).
A run in progress holds, for every shard done so far, a marker ``state/done/<shard>.json`` whose
``"results"`` names ``state/results/<file>.jsonl``: one ``ImageResult`` per line
(``boxmask.records``). Both are read here into the sidecar's per-mask dicts (``image_id,
image_path, width, height, box_id, index, label, label_name, box_xyxy, engine, inside_policy,
clicks, score, metrics, rle, files``), built from a results line exactly as merge builds them, so a
consumer cannot tell which one it read. Boxes keep the library convention (0-based inclusive
pixels).

Done markers are taken as they are (``merge`` checks them against their results files); a marker
naming a missing file is skipped with a warning.

Which one is read (``open_run``): ``masks.jsonl`` when the manifest says the merge was complete or
no shard is marked done; otherwise the done shards' results (fresher than a partial merge). The
choice and the list of files are fixed once (a ``RunSnapshot``), so that a second pass over the
same snapshot sees the same masks even while workers keep finishing shards.

Every mask has a ``Locator`` ``(file index, line number, position in the line)``: ``fetch`` reads
back chosen masks without parsing any other line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs.layout import JobLayout
from ..jobs.protocol import DoneMarker
from ..labels import LabelMap
from ..records import ImageResult
from ..writers.sidecar import SidecarWriter, error_line

log = logging.getLogger(__name__)

_MARKER_NAME = re.compile(r"\d+\.json")

Locator = tuple[int, int, int]
"""``(file index in RunSnapshot.files, 0-based line number, 0-based position of the mask in the
line)``; the position is always 0 in ``masks.jsonl``."""


@dataclass(frozen=True)
class RunSnapshot:
    """A snapshot of where a run's masks are."""

    run_dir: Path
    kind: str
    """``"sidecar"`` (``masks.jsonl``) or ``"results"`` (the done shards' result files)."""
    files: tuple[Path, ...]
    """The files read, in order (one ``masks.jsonl``, or results files in shard order)."""
    plan: dict[str, Any]
    """``plan.json`` (empty when absent)."""
    labels: LabelMap
    images: int | None
    """Images the run processed so far (manifest or done markers), when recorded."""

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings (``plan["contract"]["settings"]``), empty when unknown."""
        return dict((self.plan.get("contract") or {}).get("settings") or {})

    def _sidecar_writer(self) -> SidecarWriter:
        engine = (self.plan.get("contract") or {}).get("engine") or {}
        settings = self.settings
        return SidecarWriter(self.run_dir, self.labels,
                             engine=engine.get("name", settings.get("engine")),
                             inside_policy=settings.get("inside_point"),
                             formats=settings.get("formats") or ())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not valid JSON; ignored", path)
        return None


def _done_results(layout: JobLayout) -> tuple[list[Path], int]:
    """Results files named by the done markers (shard order) and the images they count."""
    files: list[Path] = []
    images = 0
    if not layout.done_dir.is_dir():
        return files, images
    for marker_path in sorted(layout.done_dir.glob("*.json")):
        if not _MARKER_NAME.fullmatch(marker_path.name):  # temporary or stray files
            continue
        try:
            marker = DoneMarker.from_json(_read_json(marker_path))
        except (ValueError, TypeError):
            log.warning("%s is no done marker; ignored", marker_path)
            continue
        path = layout.results_dir / Path(marker.results).name
        if not path.is_file():
            log.warning("%s names %s, which is missing; shard skipped", marker_path, path.name)
            continue
        files.append(path)
        images += marker.images
    return files, images


def open_run(run_dir: str | Path) -> RunSnapshot:
    """Decide where the masks of ``run_dir`` are read from (see the module docstring).

    Raises ``FileNotFoundError`` when the folder has neither ``masks.jsonl`` nor a done shard.
    """
    layout = JobLayout(run_dir)
    plan = _read_json(layout.plan) or {}
    labels = LabelMap.load(layout.labels) if layout.labels.is_file() else LabelMap()
    manifest = _read_json(layout.manifest) or {}
    results, images = _done_results(layout)
    sidecar = layout.sidecar
    if sidecar.is_file() and (manifest.get("complete") or not results):
        counted = (manifest.get("counts") or {}).get("images")
        return RunSnapshot(layout.root, "sidecar", (sidecar,), plan, labels,
                          int(counted) if counted is not None else None)
    if results:
        return RunSnapshot(layout.root, "results", tuple(results), plan, labels, images)
    raise FileNotFoundError(f"{run_dir} has neither masks.jsonl nor a done shard "
                            "(state/done/*.json)")


def _as_snapshot(run: str | Path | RunSnapshot) -> RunSnapshot:
    return run if isinstance(run, RunSnapshot) else open_run(run)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                yield n, line


def _parse(path: Path, n: int, line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        log.warning("%s:%d: not a JSON line, skipped", path, n + 1)
        return None


def _line_masks(src: RunSnapshot, writer: SidecarWriter | None,
                d: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-mask dicts of one parsed line of ``src``."""
    if writer is None:
        return [d]
    result = ImageResult.from_json(d)
    return [writer.mask_line(result, m) for m in result.masks]


def iter_located(run: str | Path | RunSnapshot) -> Iterator[tuple[Locator, dict[str, Any]]]:
    """``(locator, mask dict)`` of every mask of the run, in plan order then box order."""
    src = _as_snapshot(run)
    writer = src._sidecar_writer() if src.kind == "results" else None
    for fi, path in enumerate(src.files):
        for n, line in _lines(path):
            d = _parse(path, n, line)
            if d is None:
                continue
            for pos, mask in enumerate(_line_masks(src, writer, d)):
                yield (fi, n, pos), mask


def iter_masks(run: str | Path | RunSnapshot) -> Iterator[dict[str, Any]]:
    """Every mask of a run (a run folder or an opened ``RunSnapshot``) as a ``masks.jsonl`` dict,
    whether the run is merged or still in progress; see the module docstring."""
    for _, mask in iter_located(run):
        yield mask


def iter_errors(run: str | Path | RunSnapshot) -> Iterator[dict[str, Any]]:
    """Every error record of a run as an ``errors.jsonl`` dict (``image_id, box_id, stage,
    reason, source``)."""
    src = _as_snapshot(run)
    if src.kind == "sidecar":
        errors = JobLayout(src.run_dir).errors
        if errors.is_file():
            for n, line in _lines(errors):
                d = _parse(errors, n, line)
                if d is not None:
                    yield d
        return
    for path in src.files:
        for n, line in _lines(path):
            if '"errors"' not in line:  # ImageResult.to_json leaves the key out when empty
                continue
            d = _parse(path, n, line)
            if d is not None:
                for e in ImageResult.from_json(d).errors:
                    yield error_line(e)


def fetch(src: RunSnapshot, locators: Iterable[Locator]) -> dict[Locator, dict[str, Any]]:
    """The mask dicts at ``locators`` (from ``iter_located`` over the same ``src``), reading only
    their lines. Raises ``LookupError`` when one is missing (the files changed in between)."""
    wanted: dict[tuple[int, int], set[int]] = {}
    for fi, n, pos in locators:
        wanted.setdefault((fi, n), set()).add(pos)
    writer = src._sidecar_writer() if src.kind == "results" else None
    out: dict[Locator, dict[str, Any]] = {}
    for fi, path in enumerate(src.files):
        lines_here = {n for (f, n) in wanted if f == fi}
        if not lines_here:
            continue
        for n, line in _lines(path):
            if n not in lines_here:
                continue
            d = _parse(path, n, line)
            masks = _line_masks(src, writer, d) if d is not None else []
            for pos in wanted[(fi, n)]:
                if pos < len(masks):
                    out[(fi, n, pos)] = masks[pos]
    missing = [loc for locs in ([(f, n, p) for p in ps] for (f, n), ps in wanted.items())
               for loc in locs if loc not in out]
    if missing:
        raise LookupError(f"{len(missing)} masks are no longer where the first pass found them "
                          f"(first: file {src.files[missing[0][0]]}, line {missing[0][1] + 1}); "
                          "the run changed while it was read, try again")
    return out

