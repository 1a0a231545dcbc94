"""Results files: one JSON line per input item, in item order; their valid prefix and counts.

A shard's attempt writes ``state/results/<shard>.<token>.jsonl`` (see ``boxmask.jobs.worker``).
Each line ends with its own checksum, ``"line_sha256"``: the first 32 hex digits of the sha256
of the plan id, a newline, and the line's JSON without that key (see :func:`encode_line`). It
ties the line to its plan and lets a damaged file be salvaged line by line: the lines that
still verify are kept, and only the images of the others are converted again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..hashing import sha256_file
from ..records import ErrorRecord, ImageRecord, ImageResult

LINE_CHECK_KEY = "line_sha256"
_CHECK_HEX = 32


def _line_check(plan_id: str, body: bytes) -> str:
    return hashlib.sha256(plan_id.encode() + b"\n" + body).hexdigest()[:_CHECK_HEX]


def encode_line(payload: dict[str, Any], plan_id: str) -> bytes:
    """One results line: ``payload`` as JSON with its checksum as the last key, and a newline.

    ``payload`` is a non-empty dict (an ``ImageResult.to_json()``); ``plan_id`` is the plan's.
    """
    body = json.dumps(payload, ensure_ascii=False).encode()
    check = _line_check(plan_id, body)
    return body[:-1] + f', "{LINE_CHECK_KEY}": "{check}"}}\n'.encode()


def line_verifies(raw: bytes, plan_id: str) -> bool:
    """True when ``raw`` (one line, with its newline) carries a checksum that matches it and
    ``plan_id``. A line without a checksum does not verify."""
    cut = len(f', "{LINE_CHECK_KEY}": "'.encode()) + _CHECK_HEX + len(b'"}\n')
    if len(raw) <= cut or not raw.endswith(b'"}\n'):
        return False
    head, tail = raw[:-cut], raw[-cut:]
    prefix = f', "{LINE_CHECK_KEY}": "'.encode()
    if not tail.startswith(prefix):
        return False
    check = tail[len(prefix):len(prefix) + _CHECK_HEX].decode("ascii", "replace")
    return check == _line_check(plan_id, head + b"}")


def item_id(item: ImageRecord | ErrorRecord) -> str:
    """The image id a result line of ``item`` carries (``""`` for an error without one)."""
    return item.image_id if isinstance(item, ImageRecord) else (item.image_id or "")


def valid_prefix(path: Path, expected_ids: list[str] | None = None,
                 root: Path | None = None, plan_id: str | None = None) -> tuple[int, int]:
    """``(lines, bytes)`` of the longest valid prefix of a results file, read streaming.

    A line is valid when it ends with a newline, parses as JSON, carries the expected image id
    (line ``i`` <-> ``expected_ids[i]``, when given), with ``root``, every per-image file it
    lists exists under ``root`` and, with ``plan_id``, its checksum (when it has one) matches.
    A torn last line (killed mid-write), garbage after a crash or a line for the wrong image ends
    the prefix. A missing file has an empty prefix.
    """
    n = nbytes = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0, 0
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                d = json.loads(raw)
            except ValueError:
                break
            if not isinstance(d, dict) or not isinstance(d.get("record"), dict):
                break
            if expected_ids is not None and (n >= len(expected_ids)
                                             or d["record"].get("image_id") != expected_ids[n]):
                break
            if root is not None and not all((root / rel).is_file() for rel in d.get("files", [])):
                break
            if plan_id is not None and LINE_CHECK_KEY in d and not line_verifies(raw, plan_id):
                break
            n += 1
            nbytes += len(raw)
    return n, nbytes


def salvage_lines(paths: list[Path], expected_ids: list[str], root: Path,
                  plan_id: str) -> dict[int, bytes]:
    """The lines of damaged results files that can still be trusted, by item position.

    A line is kept when its checksum verifies against ``plan_id``, every per-image file it lists
    exists under ``root``, and its image id is the next expected one at or after the position
    reached (``expected_ids``: the shard's item ids in order), so lines merged or lost by the
    damage do not shift the others. The first file that has a line for a position wins.
    """
    found: dict[int, bytes] = {}
    for path in paths:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            position = 0
            for raw in f:
                if not raw.endswith(b"\n") or not line_verifies(raw, plan_id):
                    continue
                d = json.loads(raw)
                image_id = d["record"].get("image_id")
                try:
                    position = expected_ids.index(image_id, position)
                except ValueError:
                    continue
                if all((root / rel).is_file() for rel in d.get("files", [])):
                    found.setdefault(position, raw)
                position += 1
    return found


def scan_done_results(path: Path, root: Path) -> dict[str, Any]:
    """Counts and checksums of a complete results file, in one streaming pass: ``items``,
    ``images``, ``boxes``, ``masks``, ``errors``, ``warnings``, ``skipped`` (items skipped after
    repeated worker deaths, see ``boxmask.jobs.deaths``), ``results_sha256``, ``files``
    (per-image files listed) and ``files_sha256`` (sha256 over ``path\\tsha256\\n`` of each of
    them, in order). Raises ``FileNotFoundError`` when a listed file is missing."""
    counts = dict.fromkeys(("items", "images", "boxes", "masks", "errors", "warnings", "skipped",
                            "files"), 0)
    results_hash, files_hash = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        for raw in f:
            results_hash.update(raw)
            d = json.loads(raw)
            counts["items"] += 1
            counts["images"] += 1 if d["record"].get("image_path") else 0
            counts["boxes"] += len(d["record"].get("boxes", []))
            counts["masks"] += len(d.get("masks", []))
            counts["errors"] += len(d.get("errors", []))
            counts["warnings"] += len(d.get("warnings", []))
            counts["skipped"] += any(e.get("stage") == "worker" for e in d.get("errors", []))
            for rel in d.get("files", []):
                counts["files"] += 1
                files_hash.update(f"{rel}\t{sha256_file(root / rel)}\n".encode())
    return {**counts, "results_sha256": results_hash.hexdigest(),
            "files_sha256": files_hash.hexdigest()}


def iter_results(paths: Iterable[Path]) -> Iterator[ImageResult]:
    """The ``ImageResult`` of every line of the results files ``paths``, in order, streaming
    (the checksum key is ignored)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield ImageResult.from_json(json.loads(line))
