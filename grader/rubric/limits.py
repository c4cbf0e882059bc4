"""The sandbox limits of a student's worker: the one place a rubric and the run's options become `Limits`."""

from __future__ import annotations

from grader.options import RunOptions
from grader.rubric.model import Rubric
from grader.sandbox.isolation import Limits


def worker_limits(rubric: Rubric, options: RunOptions, threads: int = 0, gpu: str | None = None) -> Limits:
    """The limits every student's worker gets (the preflight runs under the same). Imports no torch, so that
    `vitgrade check` can launch its worker with them before the checks are imported."""
    cuda = options.device == "cuda" and rubric.enabled("train.accuracy")
    return Limits(memory_bytes=int(rubric.limits["memory_gib"] * 1024**3), cuda=cuda, threads=threads, gpu=gpu)
