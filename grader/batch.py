"""Batch grading: discover submissions, grade them in parallel, write reports, resume safely."""

from __future__ import annotations

import fcntl
import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from grader.gradebook import write_summary
from grader.grading import fingerprint, grade_submission
from grader.intake.naming import safe_id, student_id_from_name
from grader.render.gradescope import render_gradescope
from grader.render.html import render_html
from grader.render.markdown import render_markdown
from grader.report import Report, load_report, write_atomic
from grader.rubric import Rubric, load_rubric

SUBMISSION_SUFFIXES = {".ipynb", ".py", ".zip"}
LOCK_NAME = ".vitgrade.lock"


@dataclass
class BatchOptions:
    out: Path
    rubric: Rubric | None = None
    roster: Path | None = None
    workers: int = 0
    accuracy: str = "auto"
    timeout: float | None = None
    resume: bool = True
    manual: Path | None = None
    gradescope: bool = False
    isolation: str | None = None
    id_pattern: str | None = None
    data_dir: Path | None = None
    progress: bool = True


@dataclass(frozen=True)
class Entry:
    student_id: str
    path: Path


@dataclass
class BatchSummary:
    out: Path
    graded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{len(self.graded)} graded, {len(self.reused)} up to date (resumed), {len(self.missing)} missing "
                 f"from the roster -> {self.out / 'gradebook.csv'}, {self.out / 'summary.html'}"]
        return "\n".join([*self.notes, *lines])


def discover(paths: list[Path], id_pattern: str | None = None) -> tuple[list[Entry], list[str]]:
    """One entry per student: a folder argument holds one entry (file or sub-folder) per student."""
    candidates: list[Path] = []
    notes: list[str] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_dir():
            children = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
            entries = [p for p in children if p.is_dir() or p.suffix.lower() in SUBMISSION_SUFFIXES]
            ignored = [p.name for p in children if p not in entries]
            if ignored:
                notes.append(f"ignored {len(ignored)} entries of {path} that are not submissions: {', '.join(ignored[:5])}")
            if not entries:
                raise ValueError(f"{path} holds no submissions (.ipynb, .py, .zip or one folder per student)")
            candidates += entries
        else:
            candidates.append(path)
    seen: dict[str, int] = {}
    result = []
    for path in candidates:
        base = student_id_from_name(path, id_pattern)
        seen[base] = seen.get(base, 0) + 1
        student = base if seen[base] == 1 else f"{base}-{seen[base]}"
        if seen[base] > 1:
            notes.append(f"two submissions map to student id {base!r}; {path.name} is graded as {student!r}")
        result.append(Entry(student, path))
    return result, notes


class OutputLock:
    """One grader per output folder: a second one refuses clearly instead of interleaving writes."""

    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self.handle = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise ValueError(f"{self.path.parent} is being graded by {owner}; wait for it or use another --out") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"vitgrade pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def student_dir(out: Path, student: str) -> Path:
    return out / "students" / safe_id(student)


def write_student(out: Path, report: Report, gradescope: bool) -> None:
    """Pictures and renderings first, report.json last: its presence means the student is done."""
    folder = student_dir(out, report.student)
    for stale in folder.glob("*.png"):  # from an earlier grading of this student: not this report's
        if stale.name not in report.attachments:
            stale.unlink()
    for name, png in report.attachments.items():
        write_atomic(folder / name, png)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report))
    if gradescope:
        write_atomic(folder / "results.json", render_gradescope(report))
    write_atomic(folder / "report.json", report.to_json())


def up_to_date(out: Path, entry: Entry, expected: dict[str, str]) -> bool:
    path = student_dir(out, entry.student_id) / "report.json"
    try:
        report = load_report(path)
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return report.student == entry.student_id and report.fingerprint == expected


def default_workers(accuracy: str) -> int:
    """One per GPU when training on GPUs; one per two cores when training on the CPU (training uses
    the threads well); otherwise one per core (the checks are many small requests)."""
    import torch

    from grader.checks.training import resolve_mode

    mode = resolve_mode(accuracy)
    if mode == "full" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    cores = os.cpu_count() or 2
    return max(1, cores // 2) if mode == "quick" else cores


def gpu_pool(accuracy: str, workers: int) -> queue.Queue | None:
    """One GPU per concurrent worker when the accuracy check trains on GPUs, else None."""
    import torch

    from grader.checks.training import resolve_mode

    if resolve_mode(accuracy) != "full" or not torch.cuda.is_available():
        return None
    pool: queue.Queue = queue.Queue()
    for index in range(torch.cuda.device_count()):
        pool.put(str(index))
    return pool if pool.qsize() >= 1 else None


def _grade_one(entry: Entry, options: BatchOptions, rubric: Rubric, threads: int,
               gpus: queue.Queue | None = None) -> Report:
    gpu = gpus.get() if gpus is not None else None
    try:
        return grade_submission(entry.path, rubric=rubric, student_id=entry.student_id, isolation=options.isolation,
                                timeout=options.timeout, accuracy=options.accuracy, data_dir=options.data_dir,
                                threads=threads, gpu=gpu)
    except Exception as exc:  # a grader bug is that student's error report; the batch goes on
        return Report.failure(entry.student_id, str(entry.path), f"internal grader error: {type(exc).__name__}: {exc}")
    finally:
        if gpus is not None:
            gpus.put(gpu)


Executor = Callable[[list[Entry], Callable[[Entry], Report], Callable[[Report], None], int], None]


def local_executor(entries: list[Entry], grade: Callable[[Entry], Report], done: Callable[[Report], None],
                   workers: int) -> None:
    """Grade on a local thread pool (the heavy work is in the sandboxed child processes)."""
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: set[Future] = set()
    queue = list(entries)
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                pending.add(pool.submit(grade, queue.pop(0)))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    finally:
        pool.shutdown(wait=not sys.exc_info()[0], cancel_futures=True)


def grade_batch(paths: list[Path], options: BatchOptions, executor: Executor = local_executor) -> BatchSummary:
    """Grade every submission under `paths` into options.out; see DESIGN.md for the layout."""
    rubric = options.rubric or load_rubric()
    entries, notes = discover(paths, options.id_pattern)
    out = options.out
    summary = BatchSummary(out=out, notes=notes)
    with OutputLock(out):
        todo = []
        for entry in entries:
            expected = fingerprint(entry.path, rubric, options.accuracy)
            if options.resume and up_to_date(out, entry, expected):
                summary.reused.append(entry.student_id)
            else:
                todo.append(entry)
        if todo:  # the pass mark's reference run, trained before any student's code runs (cached after)
            from grader.checks.training import prepare_reference

            prepare_reference(rubric, options.accuracy, options.data_dir, progress=options.progress)
        workers = max(1, min(options.workers or default_workers(options.accuracy), max(1, len(todo))))
        threads = max(1, (os.cpu_count() or 2) // workers)
        bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not options.progress, file=sys.stderr)

        def done(report: Report) -> None:
            write_student(out, report, options.gradescope)
            summary.graded.append(report.student)
            bar.set_postfix_str(f"{report.student}: {report.score:g}/{report.max_score:g}", refresh=False)
            bar.update()

        try:
            # Locally, each worker thread takes a GPU from a pool; a cluster executor assigns its own.
            gpus = gpu_pool(options.accuracy, workers) if executor is local_executor else None
            executor(todo, lambda entry: _grade_one(entry, options, rubric, threads, gpus), done, workers)
        finally:
            bar.close()
            if options.manual:
                from grader.manual import merge_manual

                summary.notes += merge_manual(out, options.manual)
            summary.missing = write_summary(out, entries, options.roster, rubric)
    return summary
