"""Progress display for workers: a tqdm bar with images/s, boxes/s, masks, errors and ETA."""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from ..records import ImageResult


class Progress:
    """Counts results as a worker produces them and shows them on stderr (``enabled=False``:
    counts only)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True,
                 desc: str = "converting") -> None:
        self.started = time.time()
        self.boxes = self.masks = self.errors = 0
        """Boxes done in this run (what boxes/s divides), masks and errors of the job."""
        self._boxes_before: int | None = None
        self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, disable=not enabled,
                        dynamic_ncols=True, smoothing=0.05)

    def update(self, result: ImageResult) -> None:
        self.boxes += len(result.record.boxes)
        self.masks += len(result.masks)
        self.errors += len(result.errors)
        self.bar.update(1)
        self._postfix()

    def set_counts(self, done: int, masks: int | None = None, errors: int | None = None,
                   boxes: int | None = None) -> None:
        """Absolute update (used when the counts come from the status of other processes)."""
        if boxes is not None:  # the job's total; boxes/s counts those of this run only
            if self._boxes_before is None:
                self._boxes_before = boxes
            self.boxes = boxes - self._boxes_before
        if masks is not None:
            self.masks = masks
        if errors is not None:
            self.errors = errors
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self._postfix()

    def _postfix(self) -> None:
        elapsed = max(time.time() - self.started, 1e-9)
        post: dict[str, Any] = {"masks": self.masks, "errors": self.errors}
        if self.boxes:
            post["boxes/s"] = f"{self.boxes / elapsed:.2f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()
