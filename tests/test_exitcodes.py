"""One mapping from a run's outcome to the exit status, shared by every command and backend."""

from __future__ import annotations

from boxmask.exitcodes import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_STOPPED,
    job_exit,
    report_exit,
    worker_exit,
    workers_exit,
)
from boxmask.jobs.worker import WorkerReport


def test_worker_exit():
    assert worker_exit(stopped=False, errors=0) == EXIT_OK
    assert worker_exit(stopped=False, errors=2) == EXIT_PARTIAL
    assert worker_exit(stopped=True, errors=2) == EXIT_STOPPED
    assert worker_exit(stopped=True, errors=0, failed=True) == EXIT_FATAL


def test_report_exit():
    assert report_exit({"stopped": False, "errors": 1}) == EXIT_PARTIAL
    assert report_exit({"error": "boom"}) == EXIT_FATAL
    assert report_exit(WorkerReport("w").to_json()) == EXIT_OK
    assert report_exit(WorkerReport("w", errors=2).to_json()) == EXIT_PARTIAL
    assert report_exit(WorkerReport("w", errors=2, stopped=True).to_json()) == EXIT_STOPPED


def test_workers_exit():
    assert workers_exit([EXIT_OK, EXIT_PARTIAL]) == EXIT_OK
    assert workers_exit([EXIT_OK, EXIT_STOPPED, EXIT_FATAL]) == EXIT_STOPPED
    assert workers_exit([EXIT_OK, EXIT_FATAL]) == EXIT_FATAL
    assert workers_exit([]) == EXIT_OK


def test_job_exit():
    assert job_exit(complete=True, stopped=False, errors=0) == EXIT_OK
    assert job_exit(complete=True, stopped=False, errors=3) == EXIT_PARTIAL
    assert job_exit(complete=False, stopped=True, errors=0) == EXIT_STOPPED
    assert job_exit(complete=False, stopped=False, errors=0) == EXIT_FATAL
