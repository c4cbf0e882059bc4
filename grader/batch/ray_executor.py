"""Batch grading on a Ray cluster: one Ray task per submission; the driver alone writes files.

Each task grades one submission end to end (its sandbox included) on whichever node Ray picks and
returns the Report; `grade_batch` writes it exactly as with the local pool, so resume, roster and
summaries behave the same. A task whose worker or node dies is retried by Ray up to `max_retries`
times; after that the student gets an `error` report saying so.
"""

from __future__ import annotations

from collections.abc import Callable

from grader.report import Report

INSTALL_HINT = 'the Ray executor needs Ray: pip install "vit-autograder[ray]"'


def _run(grade: Callable, entry) -> Report:
    return grade(entry)


def ray_executor(address: str | None = None, max_retries: int = 2, num_gpus: float = 0.0,
                 init_options: dict | None = None) -> Callable:
    """An executor for `grade_batch`: `address` None starts a local Ray cluster on this machine."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None

    def execute(entries: list, grade: Callable[[object], Report], done: Callable[[Report], None],
                workers: int) -> None:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                     **(init_options or {}))
        task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=max_retries)(_run)
        grade_ref = ray.put(grade)  # the grading function and its options travel once, not per task
        pending = {task.remote(grade_ref, entry): entry for entry in entries}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                entry = pending.pop(ref)
                try:
                    report = ray.get(ref)
                except Exception as exc:  # worker or node lost after every retry
                    report = Report.failure(entry.student_id, str(entry.path),
                                            f"grading task failed on Ray after {max_retries} retries "
                                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
                                            fault="grader")  # the cluster failed, not the submission
                done(report)

    return execute
