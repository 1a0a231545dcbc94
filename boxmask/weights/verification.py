"""Verification of a cached file: ``verify`` reads the cache's records of it (``<file>.sha256``,
``<file>.source.json``) and leaves the checks of the file itself (size, sha256, loading, the
network's state-dict layout) to ``boxmask.models.checkpoint.verify_weights_file``."""

from __future__ import annotations

from typing import Any

from .registry import (
    SIZE_TOLERANCE,
    _how_to_get,
    get_entry,
    recorded_sha256,
    recorded_source,
    weights_path,
)


def verify(name: str) -> dict[str, Any]:
    """Check the cached file of ``name``; never raises for a bad file.

    Returns ``present``, ``path``, ``size_bytes``, ``size_plausible`` (within ``SIZE_TOLERANCE`` of
    the tensor payload), ``sha256``, ``sha256_recorded``, ``sha256_matches`` (against the record
    and, where known, the official hash), ``loads`` (``torch.load`` with ``weights_only=True``),
    ``keys_match`` (names and shapes equal the network's), ``errors`` (list of str) and ``ok``.
    For the U²-Net entries also ``source`` (the ``<file>.source.json`` record or None; an ONNX
    sha256 recorded there must be the published one), and ``keys_match`` requires a plain state
    dict of exactly ``U2Net(variant)``'s names and shapes.
    """
    entry = get_entry(name)
    path = weights_path(name)
    result: dict[str, Any] = {
        "name": name, "path": path, "present": path.is_file(), "size_bytes": None,
        "size_plausible": False, "sha256": None, "sha256_recorded": None,
        "sha256_matches": False, "loads": False, "keys_match": False, "errors": [], "ok": False,
    }
    if not result["present"]:
        result["errors"].append(f"not downloaded: {_how_to_get(entry)}")
        return result
    provenance: list[str] = []
    if entry.wheel is not None:
        record = recorded_source(path)
        result["source"] = record
        onnx_sha = record.get("onnx_sha256") if record else None
        if onnx_sha and onnx_sha != entry.wheel.sha256:
            provenance.append(f"converted from an ONNX file with sha256 {onnx_sha}, not the "
                              f"published {entry.wheel.sha256}")
    from ..models.checkpoint import verify_weights_file

    result.update(verify_weights_file(
        path, entry.arch, name=entry.name, payload_bytes=entry.payload_bytes,
        size_tolerance=SIZE_TOLERANCE, recorded_sha256=recorded_sha256(path),
        official_sha256=entry.sha256, provenance_errors=provenance))
    result["ok"] = not result["errors"]
    return result
