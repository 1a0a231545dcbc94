"""Class lists: id -> display name, and a stable class index.

Sources: the ILSVRC ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` per line; line
order is the standard 0..999 class index), the Open Images class-description CSV
(``/m/011k07,Tortoise``, with or without a header line), and COCO ``categories``. Labels met in
the data but missing from the list are appended in the order they are met while planning (a
deterministic order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LabelMap:
    """Ordered class ids with display names; ``index(id)`` is the class index."""

    ids: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pos = {k: i for i, k in enumerate(self.ids)}

    def add(self, label_id: str, name: str | None = None) -> None:
        if label_id not in self._pos:
            self._pos[label_id] = len(self.ids)
            self.ids.append(label_id)
        if name and label_id not in self.names:
            self.names[label_id] = name

    def index(self, label_id: str) -> int:
        return self._pos[label_id]

    def name(self, label_id: str) -> str:
        return self.names.get(label_id, label_id)

    def __contains__(self, label_id: str) -> bool:
        return label_id in self._pos

    def __len__(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict:
        return {"ids": self.ids, "names": self.names}

    @classmethod
    def from_json(cls, d: dict) -> LabelMap:
        return cls(list(d.get("ids", [])), dict(d.get("names", {})))

    def save(self, path: Path) -> None:
        from .atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def read_label_file(path: str | Path) -> LabelMap:
    """Read a synset mapping (space separated) or a class-description CSV (comma separated)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    labels = LabelMap()
    if lines and "," in lines[0] and not lines[0].startswith("n0"):
        rows = list(csv.reader(lines))
        first = rows[0]
        if len(first) >= 2 and not first[0].startswith("/m/") and first[0].lower() in (
            "label", "labelname", "id", "mid", "labelid"
        ):
            rows = rows[1:]
        for row in rows:
            if len(row) >= 2:
                labels.add(row[0].strip(), row[1].strip())
    else:
        for ln in lines:
            parts = ln.strip().split(maxsplit=1)
            labels.add(parts[0], parts[1].split(",")[0].strip() if len(parts) > 1 else None)
    return labels
