"""Results files: one JSON line per input item, in item order; their valid prefix and counts.

A shard's attempt writes ``state/results/<shard>.<token>.jsonl`` (see ``boxmask.jobs.worker``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..hashing import sha256_file
from ..records import ErrorRecord, ImageRecord


def item_id(item: ImageRecord | ErrorRecord) -> str:
    """The image id a result line of ``item`` carries (``""`` for an error without one)."""
    return item.image_id if isinstance(item, ImageRecord) else (item.image_id or "")


def valid_prefix(path: Path, expected_ids: list[str] | None = None,
                 root: Path | None = None) -> tuple[int, int]:
    """``(lines, bytes)`` of the longest valid prefix of a results file, read streaming.

    A line is valid when it ends with a newline, parses as JSON, carries the expected image id
    (line ``i`` <-> ``expected_ids[i]``, when given) and, with ``root``, every per-image file it
    lists exists under ``root``. A torn last line (killed mid-write), garbage after a crash or a
    line for the wrong image ends the prefix. A missing file has an empty prefix.
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
            n += 1
            nbytes += len(raw)
    return n, nbytes


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
