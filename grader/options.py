"""A grading run's options, resolved once at the top (the CLI, the Gradescope entry, selfcheck) and passed down.

Like Black's `Mode`: nothing below the entry points reads a raw option string or decides a default
again. `auto` becomes `full` or `quick` here, on the machine that runs the command; a cluster's
workers get the resolved options (a worker with a GPU under a driver without one still grades in
the driver's mode, so the resume fingerprint matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Accuracy = Literal["off", "quick", "full"]
ACCURACY_CHOICES = (*get_args(Accuracy), "auto")  # what the command line accepts
Device = Literal["cpu", "cuda"]
Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class RunOptions:
    """How every submission of one run is graded; build it with `resolve`."""

    accuracy: Accuracy = "off"
    # Where train.accuracy trains: `full` means a CUDA GPU (the check is skipped on a machine without one,
    # which is decided where the training runs), `quick` the CPU.
    device: Device = "cpu"
    isolation: str | None = None  # bwrap, unshare or none; None: the best available where the sandbox starts
    timeout: float | None = None  # seconds per submission; None: the rubric's limits.submission_timeout
    data_dir: Path | None = None  # None: $VITGRADE_DATA or the user cache
    executor: Executor = "local"


def resolve(accuracy: str = "auto", *, isolation: str | None = None, timeout: float | None = None,
            data_dir: str | Path | None = None, executor: str = "local") -> RunOptions:
    """The run's options from the user's words; the one place `auto` is decided (full with CUDA, quick without)."""
    if accuracy not in ACCURACY_CHOICES:
        raise ValueError(f"unknown accuracy mode {accuracy!r} (allowed: {', '.join(ACCURACY_CHOICES)})")
    if executor not in get_args(Executor):
        raise ValueError(f"unknown executor {executor!r} (allowed: {', '.join(get_args(Executor))})")
    if accuracy == "auto":
        import torch

        accuracy = "full" if torch.cuda.is_available() else "quick"
    return RunOptions(accuracy=accuracy, device="cuda" if accuracy == "full" else "cpu", isolation=isolation,
                      timeout=timeout, data_dir=Path(data_dir) if data_dir is not None else None, executor=executor)
