"""Batch grading: discover submissions, grade them in parallel, write reports, resume safely."""

from __future__ import annotations

import json
import os
import queue
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import InitVar, dataclass, field
from pathlib import Path

from tqdm import tqdm

from grader.batch.deadlines import apply_late_policy, read_late_inputs
from grader.batch.discovery import COLLISION_MARK, Entry, discover
from grader.batch.gradebook import read_roster, write_summary
from grader.batch.grading import fingerprint, grade_submission, rescore
from grader.batch.manual import Scores, apply_scores, load_scores, merge_manual, read_sheet
from grader.batch.output import RUBRIC_COPY, student_dir, write_student, write_student_safely
from grader.expected import Expected, VectorsError, challenge_expected, default_expected
from grader.options import RunOptions, resolve
from grader.render.safe import clean_text
from grader.report import Report, load_report, write_atomic
from grader.rubric import Rubric, RubricError, load_rubric
from grader.rubric.limits import worker_limits
from grader.sandbox.preflight import GraderBroken, require_preflight

LOCK_NAME = ".vitgrade.lock"
MAX_GRADER_FAULTS = 3  # consecutive reports the grader failed on: stop instead of going through the class


@dataclass
class BatchOptions:
    out: Path
    # How each submission is graded, resolved once (grader.options.resolve); None: resolved from the
    # shorthand keywords at the end of this class.
    run: RunOptions | None = None
    rubric: Rubric | None = None  # None: the rubric the folder was graded with, else the bundled one
    roster: Path | None = None
    workers: int = 0
    resume: bool = True
    manual: Path | None = None
    gradescope: bool = False
    id_pattern: str | None = None
    progress: bool = True
    preflight: bool = True  # a known-good submission through the students' sandbox first
    # The late policy's inputs (grader/batch/deadlines.py); used when the rubric has a [late] section.
    submitted: Path | None = None
    extensions: Path | None = None
    worksheet: Path | None = None
    # The grading run's secret seed for fresh weights and inputs (None: draw one); see grading_expected.
    challenge_seed: int | None = None
    # A Python caller's shorthand for run=resolve(accuracy=..., ...), when `run` is not given.
    accuracy: InitVar[str | None] = None
    timeout: InitVar[float | None] = None
    isolation: InitVar[str | None] = None
    data_dir: InitVar[Path | None] = None

    def __post_init__(self, accuracy: str | None, timeout: float | None, isolation: str | None,
                      data_dir: Path | None) -> None:
        given = {key: value for key, value in (("accuracy", accuracy), ("timeout", timeout), ("isolation", isolation),
                                               ("data_dir", data_dir)) if value is not None}
        if self.run is None:
            self.run = resolve(**given)
        elif given:
            raise TypeError(f"BatchOptions: give either run or {', '.join(given)}, not both")


@dataclass
class BatchSummary:
    out: Path
    graded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    rescored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[Report] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # TA sheet rows that could not be applied
    collisions: list[str] = field(default_factory=list)  # submissions that claimed an id already taken

    def describe(self) -> str:
        lines = [f"{len(self.graded)} graded, {len(self.reused)} up to date (resumed), "
                 + (f"{len(self.rescored)} re-scored (points changed), " if self.rescored else "")
                 + f"{len(self.missing)} missing from the roster, {len(self.errors)} error(s) "
                 f"-> {self.out / 'gradebook.csv'}, {self.out / 'summary.html'}"]
        for report in self.errors:
            lines.append(f"  error: {report.student}: {report.error.splitlines()[0] if report.error else '?'}")
        lines += [f"  TA sheet: {problem}" for problem in self.problems]
        loud = [f"ID COLLISION: {c}" for c in self.collisions]
        return clean_text("\n".join([*self.notes, *loud, *lines]))  # file names may hold undecodable bytes

    @property
    def return_code(self) -> int:
        """Exit code of `vitgrade grade`: 0 every submission has a report and every TA sheet row was applied,
        1 some row of the --manual sheet could not be applied, or two submissions claimed one student id
        (see the console)."""
        return 1 if self.problems or self.collisions else 0


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


def stored_report(out: Path, entry: Entry, expected: dict[str, str]) -> tuple[str, Report | None]:
    """("current", report) when the stored report is up to date, ("points", report) when only the rubric's
    points changed (re-score it), ("rubric", None) when the rubric changed what it checks, else ("", None).
    A report the grader failed on ("needs regrade") is never up to date: it is no verdict."""
    path = student_dir(out, entry.student_id) / "report.json"
    try:
        report = load_report(path)
    except (OSError, ValueError, TypeError, KeyError):
        return "", None
    if report.student != entry.student_id or report.needs_regrade:
        return "", None
    if report.fingerprint == expected:
        return "current", report
    same = {k: v for k, v in report.fingerprint.items() if k != "points"} == {
        k: v for k, v in expected.items() if k != "points"}
    if same:
        return "points", load_report(path, pictures=True)
    if report.status != "missing" and report.fingerprint.get("submission") == expected["submission"]:
        return "rubric", None
    return "", None


def _refresh(out: Path, report: Report, scores: Scores, gradescope: bool) -> None:
    """Rewrite an up-to-date student's outputs when they lag behind: TA scores recorded but not in the report
    (a merge that was interrupted), or a results.json asked for that is not there yet."""
    folder = student_dir(out, report.student)
    if any(student == report.student for student, _ in scores):
        report = load_report(folder / "report.json", pictures=True)
        before = report.to_json()
        apply_scores(report, scores)
        if report.to_json() != before:
            write_student(out, report, gradescope)
            return
    if gradescope and not (folder / "results.json").exists():
        write_student(out, load_report(folder / "report.json", pictures=True), gradescope)


def resolve_rubric(out: Path, given: Rubric | None) -> tuple[Rubric, list[str]]:
    """The rubric to grade `out` with: `given`, else the one `out` was graded with (RUBRIC_COPY), else the
    bundled one; with a loud note whenever it differs from what the folder was graded with."""
    stored_path = out / RUBRIC_COPY
    stored = load_rubric(stored_path) if stored_path.is_file() else None

    def same(a: Rubric, b: Rubric) -> bool:
        return (a.verdict_digest, a.points_digest) == (b.verdict_digest, b.points_digest)

    if given is None and stored is not None:
        bundled = load_rubric()
        notes = [] if same(stored, bundled) else [
            f"NOTE: no --rubric given: grading with the rubric {out} was graded with ({stored_path}), which differs "
            "from the bundled rubric; pass --rubric to change it"]
        return stored, notes
    rubric = given or load_rubric()
    if stored is not None and not same(stored, rubric):
        what = "points" if stored.verdict_digest == rubric.verdict_digest else "checks or settings"
        return rubric, [f"NOTE: the rubric's {what} changed since {out} was last graded ({stored_path} is replaced); "
                        + ("reports are re-scored without running the submissions again" if what == "points"
                           else "the affected students are regraded; TA scores are kept and re-applied")]
    return rubric, []


def _remember_rubric(out: Path, rubric: Rubric) -> None:
    """Keep the rubric file beside the reports, unless it is that file already or the Rubric object was changed
    after loading (a Python caller's in-memory rubric, which no file describes)."""
    copy = out / RUBRIC_COPY
    if rubric.path.resolve() == copy.resolve():
        return
    try:
        on_disk = load_rubric(rubric.path)
    except RubricError:
        return
    if (on_disk.verdict_digest, on_disk.points_digest) == (rubric.verdict_digest, rubric.points_digest):
        write_atomic(copy, rubric.path.read_bytes())


def check_inputs(options: BatchOptions, rubric: Rubric, entries: list[Entry]) -> None:
    """Refuse bad input (roster, TA sheet, stored TA scores) before grading anyone: ValueError."""
    roster = read_roster(options.roster) if options.roster else []
    if options.manual:
        if not options.manual.is_file():
            raise ValueError(f"manual scores {options.manual}: no such file")
        known = {e.student_id for e in entries} | set(roster) | {
            p.parent.name for p in (options.out / "students").glob("*/report.json")}
        _, problems = read_sheet(options.manual, rubric, known)
        if problems:
            raise ValueError(f"the TA sheet {options.manual} has {len(problems)} problem(s); nothing was graded:\n  "
                             + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else ""))
    load_scores(options.out)


def default_workers(options: RunOptions) -> int:
    """One per GPU when training on GPUs; one per two cores when training on the CPU (training uses
    the threads well); otherwise one per core (the checks are many small requests)."""
    import torch

    if options.device == "cuda" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    cores = os.cpu_count() or 2
    return max(1, cores // 2) if options.accuracy == "quick" else cores


def gpu_pool(options: RunOptions, workers: int) -> queue.Queue | None:
    """One GPU per concurrent worker when the accuracy check trains on GPUs, else None."""
    import torch

    if options.device != "cuda" or not torch.cuda.is_available():
        return None
    pool: queue.Queue = queue.Queue()
    for index in range(torch.cuda.device_count()):
        pool.put(str(index))
    return pool if pool.qsize() >= 1 else None


CHALLENGES = "challenges.jsonl"  # instructor-only: the secret seed of every grading run into this folder


def grading_expected(out: Path, seed: int | None, notes: list[str]) -> Expected:
    """Instructor grading compares with the reference on weights and inputs drawn from a secret seed per run,
    so the student bundle's test vectors (self-checking only) are worth nothing as a lookup table. The seed
    goes to OUT/challenges.jsonl, never to the sandbox or a report (reports name it by a hash)."""
    secret = seed if seed is not None else secrets.randbits(63)
    try:
        expected = challenge_expected(secret)
    except VectorsError as exc:  # the student bundle: no reference to compute fresh values with
        notes.append(f"graded on the bundle's fixed test vectors ({exc})")
        return default_expected()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CHALLENGES, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"challenge": expected.challenge, "seed": secret,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    return expected


def _grade_one(entry: Entry, options: BatchOptions, rubric: Rubric, threads: int,
               gpus: queue.Queue | None = None, expected: Expected | None = None) -> Report:
    gpu = gpus.get() if gpus is not None else None
    try:
        # options.run travels as resolved here: a cluster's worker must not decide `auto` again (see options.py).
        return grade_submission(entry.path, options.run, rubric=rubric, student_id=entry.student_id,
                                threads=threads, gpu=gpu, expected=expected)
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
    out, run = options.out, options.run
    rubric, notes = resolve_rubric(out, options.rubric)
    entries, found = discover(paths, options.id_pattern)
    check_inputs(options, rubric, entries)
    late_inputs = read_late_inputs(rubric, submitted=options.submitted, extension_csv=options.extensions,
                                   worksheet=options.worksheet)  # bad input fails before anyone is graded
    summary = BatchSummary(out=out, notes=notes + [n for n in found if not n.startswith(COLLISION_MARK)],
                           collisions=[n for n in found if n.startswith(COLLISION_MARK)])
    with OutputLock(out):
        _remember_rubric(out, rubric)
        scores = load_scores(out)
        todo = []
        regraded_for_rubric = 0
        for entry in entries:
            expected = fingerprint(entry.path, rubric, run.accuracy)
            state, stored = stored_report(out, entry, expected) if options.resume else ("", None)
            if state == "current":
                summary.reused.append(entry.student_id)
                _refresh(out, stored, scores, options.gradescope)
            elif state == "points":
                summary.notes += apply_scores(rescore(stored, rubric), scores)
                write_student(out, stored, options.gradescope)
                summary.rescored.append(entry.student_id)
            else:
                regraded_for_rubric += state == "rubric"
                todo.append(entry)
        if regraded_for_rubric:
            summary.notes.append(f"NOTE: {regraded_for_rubric} student(s) are regraded because the rubric changed "
                                 "what it checks since their report")
        workers = max(1, min(options.workers or default_workers(run), max(1, len(todo))))
        threads = max(1, (os.cpu_count() or 2) // workers)
        if todo and options.preflight:  # raises GraderBroken before any student report is written
            check = require_preflight(worker_limits(rubric, run, threads), run.isolation)
            summary.notes.append(check.describe())
        if todo:  # the pass mark's reference run, trained before any student's code runs (cached after)
            from grader.checks.training import prepare_reference

            prepare_reference(rubric, run, progress=options.progress)
        faults_in_a_row = [0]
        bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not options.progress, file=sys.stderr)

        def done(report: Report) -> None:
            summary.notes.extend(apply_scores(report, scores))  # TA work survives any regrade
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
            gpus = gpu_pool(run, workers) if executor is local_executor else None
            expected = grading_expected(out, options.challenge_seed, summary.notes) if todo else None
            executor(todo, lambda entry: _grade_one(entry, options, rubric, threads, gpus, expected), done, workers)
        finally:
            bar.close()
            if options.manual:
                merged = merge_manual(out, options.manual, options.gradescope)
                summary.notes += merged.notes
                summary.problems += merged.problems
            summary.notes += apply_late_policy(out, rubric, {e.student_id: e.path for e in entries}, late_inputs)
            written = write_summary(out, entries, options.roster, rubric,
                                    problems=[f"ID COLLISION: {c}" for c in summary.collisions])
            summary.missing = written.missing
            summary.notes += written.notes
            summary.errors = [r for r in written.reports if r.status == "error"]
    return summary
