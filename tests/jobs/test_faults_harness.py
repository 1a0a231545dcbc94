"""The fault harness, short: convert -> kill at a random moment -> re-run, 20 times, each kind of
kill at each moment once (``tests/helpers/fault_harness.py``; ``benchmarks/bench_faults.py`` runs
it for hundreds of trials). Every trial must end with exit 0 and the uninterrupted run's output."""

from __future__ import annotations

import random

import fault_harness as H
import pytest

TRIALS = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    ann, images = H.make_tiny_coco(folder / "input")
    return ann, images, H.reference_run(ann, images, folder / "reference")


def test_every_kind_of_kill_at_every_moment_resumes_to_the_uninterrupted_output(tiny, tmp_path):
    ann, images, reference = tiny
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    trials = [H.run_trial(ann, images, reference, tmp_path / f"trial{i}", kind, moment, rng)
              for i, (kind, moment) in enumerate(H.plan_trials(TRIALS, rng))]
    summary = H.summarize(trials)
    print(f"fault harness: seed {seed}, {summary}")
    failed = [(t.kind, t.moment, t.reached, t.problems, t.rerun_stderr[-800:])
              for t in trials if not t.ok]
    assert not failed, f"seed {seed}: {failed}"
    assert summary["trials"] == TRIALS
    # The kills landed over the whole life of a run, not all before or after it.
    reached = set(summary["by_phase_reached"])
    assert {"writing", "after-merge"} <= reached and reached & {"starting", "planning",
                                                                  "planned", "leased"}, reached
