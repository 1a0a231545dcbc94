"""Exit statuses of every command, and how a run's outcome maps to one: one place for all."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
"""Some items failed (see errors.jsonl) but the rest was converted."""
EXIT_STOPPED = 4
"""Stopped by a signal before the work was finished; run the same command again to resume."""


def worker_exit(*, stopped: bool, errors: int, failed: bool = False) -> int:
    """What one worker ends with: 1 when it failed (raised or died), 4 when stopped by a signal,
    3 when it finished with item errors, else 0."""
    if failed:
        return EXIT_FATAL
    if stopped:
        return EXIT_STOPPED
    return EXIT_PARTIAL if errors else EXIT_OK


def report_exit(report: Mapping[str, Any]) -> int:
    """What one worker ends with, from its report (``WorkerReport.to_json()``, or a Ray actor's
    report, which has ``error`` when the actor raised or died): see ``worker_exit``."""
    return worker_exit(stopped=bool(report.get("stopped")), errors=int(report.get("errors") or 0),
                       failed=bool(report.get("error")))


def workers_exit(codes: Iterable[int]) -> int:
    """What a launcher of several workers ends with: 4 when any was stopped, else 0 when each
    finished (with or without item errors), else 1."""
    codes = list(codes)
    if any(c == EXIT_STOPPED for c in codes):
        return EXIT_STOPPED
    return EXIT_OK if all(c in (EXIT_OK, EXIT_PARTIAL) for c in codes) else EXIT_FATAL


def job_exit(*, complete: bool, stopped: bool, errors: int) -> int:
    """What ``convert`` ends with: for a complete job 3 with item errors, else 0; for an
    incomplete one 4 when it was stopped (resume by running it again), else 1."""
    if not complete:
        return EXIT_STOPPED if stopped else EXIT_FATAL
    return EXIT_PARTIAL if errors else EXIT_OK
