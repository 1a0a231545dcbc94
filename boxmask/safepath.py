"""Keep every path the tool reads or writes inside the folder it belongs to.

Ids and file names come from annotation files, which are untrusted: an id such as ``../../etc/x``
or ``/abs/path`` must never make the tool write outside ``--output`` or read outside the images
root. Functions here raise ``UnsafePathError``; callers turn it into an error record.

The checks are lexical: a symbolic link that already sits inside a root and points elsewhere is
followed like any other path (the roots are the user's own folders).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

MAX_COMPONENT = 200
"""Longest safe component, in characters: leaves room below the usual 255-byte file-name limit
for the suffixes and temporary-file marks added to it (``boxmask.atomic``)."""

_COMPONENT = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_COMPONENT - 1}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME_BYTES = 255


class UnsafePathError(ValueError):
    """A path or id that would escape its folder or is not a plain file name."""


def check_component(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a single safe path component, else raise ``UnsafePathError``.

    Safe: 1-200 ASCII characters from ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``, and not
    containing ``..``. Nothing else (no ``/``, ``\\``, spaces, control or non-ASCII characters).
    """
    if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or ".." in name:
        raise UnsafePathError(f"{what} {name!r} is not a safe file name (allowed: up to "
                              f"{MAX_COMPONENT} letters, digits, '.', '_', '-'; no '..', no '/')")
    return name


def sanitize_component(name: str) -> str:
    """Map an arbitrary label to a safe component (``/m/01g317`` -> ``m01g317``) or raise.

    Spaces become ``_``; characters outside ``[A-Za-z0-9._-]`` (including non-ASCII ones) are
    dropped; runs of dots shrink to one; leading dots/dashes are stripped; the result is cut to
    ``MAX_COMPONENT`` characters. Different labels can map to the same component; callers that
    need uniqueness must check for it. Raises ``UnsafePathError`` when nothing usable is left.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"label {name!r} is not a string")
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", name.replace(" ", "_"))
    cleaned = re.sub(r"\.{2,}", ".", cleaned).lstrip(".-")[:MAX_COMPONENT]
    return check_component(cleaned, "label")


def safe_relative(path: object, what: str = "path") -> PurePosixPath:
    """Validate a relative POSIX path from an annotation file.

    Refused: empty paths or ones naming no file (``.``), NUL and other control characters,
    backslashes, absolute paths, ``~`` at the start, any ``..`` component, and components longer
    than 255 bytes. ``.`` components and repeated slashes are dropped (``a/./b`` -> ``a/b``).
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"{what} {path!r} is empty or not a string")
    if _CONTROL.search(path) or "\\" in path:
        raise UnsafePathError(f"{what} {path!r} contains NUL, a control character or a backslash")
    p = PurePosixPath(path)
    if p.is_absolute() or path.startswith("~") or ".." in p.parts:
        raise UnsafePathError(f"{what} {path!r} is absolute, starts with '~' or climbs out "
                              "with '..'")
    if not p.parts:
        raise UnsafePathError(f"{what} {path!r} names no file")
    for part in p.parts:
        try:
            size = len(os.fsencode(part))
        except UnicodeEncodeError:
            raise UnsafePathError(f"{what} {path!r} cannot be encoded as a file name") from None
        if size > _MAX_NAME_BYTES:
            raise UnsafePathError(f"{what} {path!r} has a component longer than "
                                  f"{_MAX_NAME_BYTES} bytes")
    return p


def join_inside(root: str | Path, relative: str | PurePosixPath, what: str = "path") -> Path:
    """``root / relative`` after checking that ``relative`` stays strictly inside ``root``.

    ``relative`` must pass ``safe_relative``; the result is never ``root`` itself nor outside it
    (checked lexically on absolute paths).
    """
    rel = safe_relative(str(relative), what)
    out = Path(root) / Path(*rel.parts)
    root_abs = Path(os.path.normpath(Path(root).absolute()))
    out_abs = Path(os.path.normpath(out.absolute()))
    if root_abs not in out_abs.parents:
        raise UnsafePathError(f"{what} {str(relative)!r} escapes {root}")
    return out
