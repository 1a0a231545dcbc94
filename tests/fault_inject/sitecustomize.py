"""Faults injected into boxmask processes started by the fault tests (this folder is put first on
their ``PYTHONPATH``, so Python imports this module at start-up in every child process):

* ``BOXMASK_TEST_SLOW_IMAGE=<image id>:<seconds>``: loading that image first sleeps, so that a
  test can stop the job while a worker is on it.
* ``BOXMASK_TEST_SLOW_ONCE=<path>`` (with ``BOXMASK_TEST_SLOW_IMAGE``): the image is slow only
  once across all processes: the load that creates the file ``<path>`` sleeps, the later ones
  (a requeued or re-run worker) find it and do not.
* ``BOXMASK_TEST_CRASH_IMAGE=<image id>``: loading that image kills the process (SIGKILL), as
  an image that crashes the decoder or the engine would.
* ``BOXMASK_TEST_CLOCK_SKEW=<seconds>``: ``time.time()`` of this process runs that far ahead
  (negative: behind), as on a host whose clock is off.

Nothing is imported from boxmask here: the patch is applied when ``boxmask.jobs.steps`` is first
imported, by a finder that wraps its loader.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time

_skew = float(os.environ.get("BOXMASK_TEST_CLOCK_SKEW") or 0)
if _skew:
    _real_time = time.time
    time.time = lambda: _real_time() + _skew  # noqa: E731

_slow = os.environ.get("BOXMASK_TEST_SLOW_IMAGE")
_slow_once = os.environ.get("BOXMASK_TEST_SLOW_ONCE")
_crash = os.environ.get("BOXMASK_TEST_CRASH_IMAGE")


def _first_slow_load() -> bool:
    """Whether this load of the slow image sleeps: always, or with ``BOXMASK_TEST_SLOW_ONCE``
    only when it is the first to create the marker file."""
    if not _slow_once:
        return True
    try:
        os.close(os.open(_slow_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _patch_steps(module) -> None:
    slow_id, _, seconds = (_slow or "").rpartition(":")
    real_load = module.load

    def load(item, *args, **kwargs):
        image_id = getattr(item, "image_id", None)
        if _slow and image_id == slow_id and _first_slow_load():
            time.sleep(float(seconds))
        if _crash and image_id == _crash:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return real_load(item, *args, **kwargs)

    module.load = load


class _PatchSteps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "boxmask.jobs.steps":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch_steps(module)

        loader.exec_module = exec_module
        return spec


if _slow or _crash:
    sys.meta_path.insert(0, _PatchSteps())
