"""Stop requests: SIGTERM, SIGUSR1 and SIGINT ask a worker to stop between batches.

A second SIGINT after a stop was requested raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""The signals ``StopRequested.install`` handles."""


class StopRequested:
    """Set by SIGTERM/SIGUSR1/SIGINT (or ``event.set()``); the worker stops between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle ``STOP_SIGNALS`` (in the main thread only; elsewhere it does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("received %s: stopping after the current batch", signal.Signals(signum).name)
        self.event.set()

    def restore(self) -> None:
        """Put back the handlers ``install`` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def is_set(self) -> bool:
        return self.event.is_set()
