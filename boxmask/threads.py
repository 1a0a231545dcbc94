"""CPU threads of this process, without importing torch for engines that do not use it."""

from __future__ import annotations

import os
import sys


def set_threads(n: int) -> None:
    """Limit OpenCV and torch to ``n`` threads in this process.

    torch is limited at once when it is already imported; otherwise ``OMP_NUM_THREADS`` is set,
    which torch reads when a network engine imports it later.
    """
    import cv2

    cv2.setNumThreads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
