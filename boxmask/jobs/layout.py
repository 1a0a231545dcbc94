"""Where everything of a conversion lives inside its output directory.

```
<output>/
  plan.json                    the contract: settings, engine, shard list (written last by `plan`)
  plan.lock                    held while a process plans (other launchers wait for plan.json)
  labels.json                  class ids and names seen by the reader
  shards/000000.jsonl.gz       input items of shard 0: {"record": ...} or {"error": ...} per line,
                               gzip-compressed
  state/leases/000000.lease    who works on shard 0 now (O_EXCL file, mtime = heartbeat)
  state/results/000000.<token>.jsonl
                               one ImageResult per input item, in item order, one file per lease
                               attempt (<token> = the attempt's lease token)
  state/done/000000.json       shard 0 finished: counts and checksums, names the results file
  state/failures/000000.<token>.json
                               an attempt on shard 0 that ended abnormally (its lease was taken
                               over: its worker died or hung), with the position it reached;
                               <token>.observed.json when a live process saw the worker die
  state/failed/000000.json     written by earlier versions only (a shard given up as a whole);
                               re-opened by the next run
  state/merge.lease            held while a process merges
  logs/                        cluster job logs
  <format>/...                 per-image outputs of each format, then its index files after merge
  masks.jsonl errors.jsonl manifest.json   written by merge
```
"""

from __future__ import annotations

import os
from pathlib import Path


class JobLayout:
    """Paths of one conversion's output directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def plan_lock(self) -> Path:
        return self.root / "plan.lock"

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def leases_dir(self) -> Path:
        return self.state_dir / "leases"

    @property
    def results_dir(self) -> Path:
        return self.state_dir / "results"

    @property
    def done_dir(self) -> Path:
        return self.state_dir / "done"

    @property
    def failures_dir(self) -> Path:
        return self.state_dir / "failures"

    @property
    def failed_dir(self) -> Path:
        return self.state_dir / "failed"

    @property
    def merge_lock(self) -> Path:
        return self.state_dir / "merge.lease"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def sidecar(self) -> Path:
        return self.root / "masks.jsonl"

    @property
    def errors(self) -> Path:
        return self.root / "errors.jsonl"

    @staticmethod
    def shard_name(shard_id: int) -> str:
        return f"{shard_id:06d}"

    def shard_file(self, shard_id: int) -> Path:
        return self.shards_dir / f"{self.shard_name(shard_id)}.jsonl.gz"

    def lease_file(self, shard_id: int) -> Path:
        return self.leases_dir / f"{self.shard_name(shard_id)}.lease"

    def attempt_file(self, shard_id: int, token: str) -> Path:
        """The results file of one lease attempt on a shard."""
        return self.results_dir / f"{self.shard_name(shard_id)}.{token}.jsonl"

    def attempt_files(self, shard_id: int) -> list[Path]:
        """Every attempt's results file of a shard, sorted by name."""
        folder = self.results_dir
        prefix = f"{self.shard_name(shard_id)}."
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return [folder / n for n in sorted(n for n in names if n.startswith(prefix)
                                           and n.endswith(".jsonl"))]

    def salvage_files(self, shard_id: int) -> list[Path]:
        """Results files of a shard whose lines a worker may reuse where their checksums still
        verify (``boxmask.jobs.results.salvage_lines``), by name: ``*.jsonl.damaged`` (a done
        shard's file that merge found damaged) and ``*.jsonl.retry`` (the kept lines of a shard
        re-opened to retry its skipped items)."""
        prefix = f"{self.shard_name(shard_id)}."
        try:
            names = os.listdir(self.results_dir)
        except FileNotFoundError:
            return []
        return [self.results_dir / n for n in sorted(names) if n.startswith(prefix)
                and (n.endswith(".jsonl.damaged") or n.endswith(".jsonl.retry"))]

    def all_attempt_files(self) -> dict[int, list[Path]]:
        """Every attempt's results file, by shard id (one listing of the results folder)."""
        folder = self.results_dir
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return {}
        out: dict[int, list[Path]] = {}
        for name in names:
            shard, _, rest = name.partition(".")
            if shard.isdigit() and rest and name.endswith(".jsonl"):
                out.setdefault(int(shard), []).append(folder / name)
        return out

    def done_file(self, shard_id: int) -> Path:
        return self.done_dir / f"{self.shard_name(shard_id)}.json"

    def failure_file(self, shard_id: int, token: str) -> Path:
        return self.failures_dir / f"{self.shard_name(shard_id)}.{token}.json"

    def observed_failure_file(self, shard_id: int, token: str) -> Path:
        """The record of an attempt whose worker a live process saw die (``jobs.deaths``)."""
        return self.failures_dir / f"{self.shard_name(shard_id)}.{token}.observed.json"

    def failure_files(self, shard_id: int) -> list[Path]:
        return sorted(self.failures_dir.glob(f"{self.shard_name(shard_id)}.*.json"))

    def failed_file(self, shard_id: int) -> Path:
        return self.failed_dir / f"{self.shard_name(shard_id)}.json"

    def make_dirs(self) -> None:
        for d in (self.shards_dir, self.leases_dir, self.results_dir, self.done_dir,
                  self.failures_dir, self.failed_dir):
            d.mkdir(parents=True, exist_ok=True)
