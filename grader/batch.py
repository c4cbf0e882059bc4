"""Batch grading: discover submissions, grade them in parallel, write reports, resume safely."""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from grader.gradebook import write_summary
from grader.grading import fingerprint, grade_submission, worker_limits
from grader.intake.naming import safe_id, student_id_from_name
from grader.render.gradescope import render_gradescope
from grader.render.html import render_html
from grader.render.markdown import render_markdown
from grader.render.safe import clean_report, clean_text
from grader.report import Report, load_report, write_atomic
from grader.rubric import Rubric, load_rubric
from grader.sandbox.preflight import GraderBroken, require_preflight

SUBMISSION_SUFFIXES = {".ipynb", ".py", ".zip"}
CODE_NAME = "code.txt"  # beside report.json: the code that ran, read by the class summary
LOCK_NAME = ".vitgrade.lock"
MAX_GRADER_FAULTS = 3  # consecutive reports the grader failed on: stop instead of going through the class


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
    preflight: bool = True  # a known-good submission through the students' sandbox first


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
    collisions: list[str] = field(default_factory=list)  # submissions that claimed an id already taken

    def describe(self) -> str:
        lines = [f"{len(self.graded)} graded, {len(self.reused)} up to date (resumed), {len(self.missing)} missing "
                 f"from the roster -> {self.out / 'gradebook.csv'}, {self.out / 'summary.html'}"]
        loud = [f"ID COLLISION: {c}" for c in self.collisions]
        return clean_text("\n".join([*self.notes, *loud, *lines]))  # file names may hold undecodable bytes


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
    result, collisions = assign_ids(candidates, id_pattern)
    return result, notes + collisions


COLLISION_MARK = "two submissions map to student id"


def assign_ids(paths: list[Path], id_pattern: str | None = None) -> tuple[list[Entry], list[str]]:
    """A distinct student id for each path, and a message for each id claimed twice.

    Ids are compared as folder names are on a case-insensitive file system, after safe_id; a later
    claimant gets `<id>-2`, `-3`... skipping every id another path maps to, so that it can never take
    a real student's id (or overwrite their report)."""
    bases = [student_id_from_name(path, id_pattern) for path in paths]
    claimed = {safe_id(base).casefold() for base in bases}
    used: set[str] = set()
    entries, collisions = [], []
    for path, base in zip(paths, bases, strict=True):
        student = base
        if student.casefold() in used:
            number = 2
            while (student := safe_id(f"{base}-{number}")).casefold() in used | claimed:
                number += 1
            collisions.append(f"{COLLISION_MARK} {base!r}: {path.name} is graded as {student!r}; check the "
                              "file names (or --id-pattern) before uploading grades")
        used.add(student.casefold())
        entries.append(Entry(student, path))
    return entries, collisions


def _lock(handle, unlock: bool = False) -> None:
    """An exclusive, non-blocking lock on an open file: flock where it exists (POSIX), else msvcrt's."""
    try:
        import fcntl
    except ImportError:
        import msvcrt  # Windows

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK if unlock else msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle, fcntl.LOCK_UN if unlock else fcntl.LOCK_EX | fcntl.LOCK_NB)


class OutputLock:
    """One grader per output folder: a second one refuses clearly instead of interleaving writes."""

    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self.handle = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            _lock(self.handle)
        except (BlockingIOError, PermissionError):
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
            _lock(self.handle, unlock=True)
            self.handle.close()


def student_dir(out: Path, student: str) -> Path:
    return out / "students" / safe_id(student)


def write_student(out: Path, report: Report, gradescope: bool) -> None:
    """Pictures and renderings first, report.json last: its presence means the student is done."""
    folder = student_dir(out, report.student)
    clean_report(report)  # reports from a cluster executor come here without passing grade_submission
    for stale in folder.glob("*.png"):  # from an earlier grading of this student: not this report's
        if stale.name not in report.attachments:
            stale.unlink()
    for name, png in report.attachments.items():
        write_atomic(folder / name, png)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report))
    if gradescope:
        write_atomic(folder / "results.json", render_gradescope(report))
    if report.code:
        write_atomic(folder / CODE_NAME, report.code)
    else:
        (folder / CODE_NAME).unlink(missing_ok=True)
    write_atomic(folder / "report.json", report.to_json())


def write_student_safely(out: Path, report: Report, gradescope: bool) -> str | None:
    """write_student, where a failure becomes that student's error report, never the batch's end;
    returns a note when even that report could not be written."""
    try:
        write_student(out, report, gradescope)
        return None
    except Exception as exc:  # whatever the submission made the writing do, the batch goes on
        problem = f"internal grader error: the report could not be written ({type(exc).__name__}: {exc})"
    try:
        write_student(out, Report.failure(report.student, report.submission, problem), gradescope)
        return None
    except Exception as exc:  # the failure report itself: noted, the batch goes on
        return f"{report.student}: no report could be written ({type(exc).__name__}: {exc}); regrade this student"


def up_to_date(out: Path, entry: Entry, expected: dict[str, str]) -> bool:
    path = student_dir(out, entry.student_id) / "report.json"
    try:
        report = load_report(path)
    except (OSError, ValueError, TypeError, KeyError):
        return False
    # A grader fault is no verdict: the next run grades that student again.
    return report.student == entry.student_id and report.fingerprint == expected and not report.needs_regrade


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
        return Report.failure(entry.student_id, str(entry.path), f"internal grader error: {type(exc).__name__}: {exc}",
                              fault="grader")
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


def _fault_text(report: Report) -> str:
    faulty = [c.message for c in report.checks if c.fault == "grader"]
    return (faulty[0] if faulty else report.error)[:600]


def grade_batch(paths: list[Path], options: BatchOptions, executor: Executor = local_executor) -> BatchSummary:
    """Grade every submission under `paths` into options.out; see DESIGN.md for the layout."""
    rubric = options.rubric or load_rubric()
    entries, notes = discover(paths, options.id_pattern)
    out = options.out
    summary = BatchSummary(out=out, notes=[n for n in notes if not n.startswith(COLLISION_MARK)],
                           collisions=[n for n in notes if n.startswith(COLLISION_MARK)])
    with OutputLock(out):
        todo = []
        for entry in entries:
            expected = fingerprint(entry.path, rubric, options.accuracy)
            if options.resume and up_to_date(out, entry, expected):
                summary.reused.append(entry.student_id)
            else:
                todo.append(entry)
        workers = max(1, min(options.workers or default_workers(options.accuracy), max(1, len(todo))))
        threads = max(1, (os.cpu_count() or 2) // workers)
        if todo and options.preflight:  # raises GraderBroken before any student report is written
            check = require_preflight(worker_limits(rubric, options.accuracy, threads), options.isolation)
            summary.notes.append(check.describe())
        faults_in_a_row = [0]
        bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not options.progress, file=sys.stderr)

        def done(report: Report) -> None:
            problem = write_student_safely(out, report, options.gradescope)
            if problem:
                summary.notes.append(problem)
            summary.graded.append(report.student)
            bar.set_postfix_str(f"{report.student}: {report.score:g}/{report.max_score:g}", refresh=False)
            bar.update()
            faults_in_a_row[0] = faults_in_a_row[0] + 1 if report.needs_regrade else 0
            if faults_in_a_row[0] >= MAX_GRADER_FAULTS:
                raise GraderBroken(f"stopped: the grader itself failed on {MAX_GRADER_FAULTS} submissions in a row "
                                   f"(the last, {report.student}: {_fault_text(report)}); their reports say "
                                   "'needs regrade'. Run `vitgrade doctor`, fix the cause, and grade again")

        try:
            # Locally, each worker thread takes a GPU from a pool; a cluster executor assigns its own.
            gpus = gpu_pool(options.accuracy, workers) if executor is local_executor else None
            executor(todo, lambda entry: _grade_one(entry, options, rubric, threads, gpus), done, workers)
        finally:
            bar.close()
            if options.manual:
                from grader.manual import merge_manual

                summary.notes += merge_manual(out, options.manual)
            summary.missing = write_summary(out, entries, options.roster, rubric,
                                            problems=[f"ID COLLISION: {c}" for c in summary.collisions])
    return summary
