"""Keep every path the tool reads or writes inside the folder it belongs to.

Ids and file names come from annotation files, which are untrusted: an id such as ``../../etc/x``
or ``/abs/path`` must never make the tool write outside ``--output`` or read outside the images
root. Functions here raise ``UnsafePathError``; callers turn it into an error record.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class UnsafePathError(ValueError):
    """A path or id that would escape its folder or is not a plain file name."""


def check_component(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a single safe path component, else raise ``UnsafePathError``.

    Safe: 1-200 characters from ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``, and not
    containing ``..``.
    """
    if not isinstance(name, str) or not _COMPONENT.match(name) or ".." in name:
        raise UnsafePathError(f"{what} {name!r} is not a safe file name "
                              "(allowed: letters, digits, '.', '_', '-'; no '..', no '/')")
    return name


def sanitize_component(name: str) -> str:
    """Map an arbitrary label to a safe component (``/m/01g317`` -> ``m01g317``) or raise."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", name.replace(" ", "_")).lstrip(".-")
    return check_component(cleaned, "label")


def safe_relative(path: str, what: str = "path") -> PurePosixPath:
    """Validate a relative POSIX path from an annotation file (no absolute paths, no ``..``)."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise UnsafePathError(f"{what} {path!r} is empty or contains NUL or backslash")
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or path.startswith("~"):
        raise UnsafePathError(f"{what} {path!r} is absolute or climbs out with '..'")
    return p


def join_inside(root: Path, relative: str | PurePosixPath, what: str = "path") -> Path:
    """``root / relative`` after checking ``relative`` stays inside ``root`` lexically."""
    rel = safe_relative(str(relative), what)
    out = Path(root) / Path(*rel.parts)
    root_abs = Path(root).absolute()
    if root_abs not in out.absolute().parents and out.absolute() != root_abs:
        raise UnsafePathError(f"{what} {relative!r} escapes {root}")
    return out
