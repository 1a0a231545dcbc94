"""A job: one conversion's output directory (``JobLayout``) with its plan, read once.

Commands build a ``Job`` once (``Job.open``) and hand it to the worker, merge, status and the
launchers; functions that take an output directory accept a ``Job`` as well (``Job.of``).
``current`` re-reads the plan only when ``plan.json`` changed on disk (one ``stat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import JobLayout
from .protocol import DoneMarker, NoPlanError, Plan, read_done_marker, read_plan, read_plan_json
from .settings import Settings

PlanStat = tuple[int, int, int] | None
"""``(inode, size, mtime_ns)`` of ``plan.json``, None when it is missing."""


def plan_stat(path: Path) -> PlanStat:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Job:
    """The layout and plan of one conversion; ``stat``: ``plan.json`` as it was when read."""

    layout: JobLayout
    plan: Plan
    stat: PlanStat = None

    @classmethod
    def open(cls, out_dir: str | Path) -> Job:
        """The job in ``out_dir``; ``NoPlanError`` when it has no plan, ``PlanMismatchError``
        when its plan has another format."""
        layout = JobLayout(out_dir)
        stat = plan_stat(layout.plan)  # before the read: a plan replaced after it is read again
        plan = read_plan(layout.plan)
        if plan is None:
            raise NoPlanError(f"{out_dir} has no plan.json: run `boxmask plan` or "
                              "`boxmask convert` first")
        return cls(layout, plan, stat)

    @classmethod
    def of(cls, job: JobLike) -> Job:
        """``job`` itself, or the job of an output directory."""
        return job if isinstance(job, Job) else cls.open(job)

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def settings(self) -> Settings:
        return self.plan.settings

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id

    def plan_unchanged(self) -> bool:
        """True while ``plan.json`` is this job's plan (a stat; a read only when the file
        changed)."""
        if plan_stat(self.layout.plan) == self.stat:
            return True
        current = read_plan_json(self.layout.plan)
        return current is not None and current.get("plan_id") == self.plan_id

    def current(self) -> Job:
        """This job, or the job as ``plan.json`` now describes it when that file changed."""
        return self if plan_stat(self.layout.plan) == self.stat else Job.open(self.root)

    def done_marker(self, shard_id: int) -> DoneMarker | None:
        """The shard's done marker when it is readable and belongs to this plan."""
        marker = read_done_marker(self.layout, shard_id)
        return marker if marker is not None and marker.plan_id == self.plan_id else None


JobLike = Job | str | Path
"""A ``Job`` or the output directory of one."""
