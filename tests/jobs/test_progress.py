"""The progress line of a conversion: images/s from tqdm, boxes/s, masks and errors."""

from __future__ import annotations

from boxmask.jobs.progress import Progress


def test_counts_from_the_job_status_show_boxes_per_second_of_this_run_only() -> None:
    progress = Progress(total=10, enabled=True)
    try:
        progress.set_counts(2, masks=3, errors=0, boxes=5)  # done before this run
        progress.set_counts(6, masks=11, errors=1, boxes=17)
        assert progress.boxes == 12 and progress.bar.n == 6
        assert "boxes/s" in progress.bar.postfix and "masks=11" in progress.bar.postfix
        assert "errors=1" in progress.bar.postfix
    finally:
        progress.close()
