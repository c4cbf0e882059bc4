"""Grade one submission end to end: intake, sandbox, every check, one Report."""

from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path
from typing import Any, get_args

from grader import __version__
from grader.checks import CHECKS, Check
from grader.checks.context import CheckFailed, GradingContext, Outcome, TrainingPictures
from grader.checks.training import prepare_reference
from grader.expected import Expected, default_expected
from grader.intake import IntakeError, Submission, content_digest, load_submission
from grader.intake.naming import student_id_from_name
from grader.options import Accuracy, RunOptions, resolve
from grader.render.safe import clean_report
from grader.report import CheckResult, Report, answer_picture_files
from grader.rubric import Rubric, load_rubric
from grader.rubric.limits import worker_limits
from grader.sandbox import Limits, Sandbox, SandboxError, choose_level

FLOAT64_TROUBLE = ("Double", "Float", "dtype", "scalar type")


GRADER_FAULT = "grader fault, no points lost (grade again once the grader works; see `vitgrade doctor`)"


def grader_fault(message: str, **details) -> Outcome:
    """An `error` the grader caused: no verdict on the submission, and no points lost."""
    return Outcome("error", f"{GRADER_FAULT}: {message}", {**details, "fault": "grader"})


def _start(ctx: GradingContext) -> None:
    """Start the worker and load the code, noting a load failure for load.definitions (or, when the
    sandbox itself failed before the code was loaded, the grader's fault for every worker check)."""
    try:
        ctx.classes = ctx.sandbox.start().get("classes", [])
    except SandboxError as error:
        if error.fault == "grader":
            ctx.worker.grader_fault = error.message
        else:
            ctx.worker.load_error = error.message
        ctx.worker.load_traceback = error.traceback


def _needs_float32(ctx: GradingContext) -> str | None:
    """Some submissions hard-code float32 tensors; probe once and fall back (with a warning)."""
    if "ViT" not in ctx.classes:
        return None
    from grader.spec import ViTConfig, random_input

    try:
        built = ctx.shared("ViT", kwargs=ViTConfig().kwargs())
        ctx.forward(built, random_input("ViT", ViTConfig(), batch=1), "probe")
    except CheckFailed as failure:
        if any(word in str(failure) for word in FLOAT64_TROUBLE):
            return str(failure)
    except SandboxError:
        return None
    return None


MAX_WORKER_DEATHS = 3  # after this many crashes, timeouts or memory kills, the other checks are not run


def _outcome(check: Check, ctx: GradingContext, deadline: float) -> tuple[Outcome, float]:
    started = time.monotonic()
    # The waiting the grader caused (see RequestClock) moves the submission's deadline too, up to twice its limit.
    timeout = ctx.rubric.limits["submission_timeout"]
    if time.monotonic() > deadline + min(ctx.sandbox.stats.excused_seconds, 2 * timeout):
        return Outcome("error", "not run: the submission used up its time limit "
                                f"({ctx.rubric.limits['submission_timeout']:.0f} s; "
                                f"{ctx.sandbox.stats.excused_seconds:.0f} s the grader caused not counted)"), 0.0
    if ctx.worker.grader_fault is not None and check.needs_worker:
        return grader_fault(f"the sandbox could not run any code: {ctx.worker.grader_fault}"), 0.0
    deaths = ctx.worker.deaths
    if deaths >= MAX_WORKER_DEATHS and check.needs_worker:
        return Outcome("error", f"not run: the submission's worker died {deaths} times (crash, timeout or memory; "
                                "see the checks above)"), 0.0
    if check.needs_worker and check.id != "load.definitions" and (ctx.worker.load_error is not None or not ctx.classes):
        return Outcome.failed("not run: the code could not be loaded (see load.definitions)"), 0.0
    try:
        outcome = check.run(ctx)
    except CheckFailed as failure:
        outcome = Outcome.failed(str(failure))
    except SandboxError as error:
        if error.fault == "grader":  # a restart of the worker failed before the code was loaded
            ctx.worker.grader_fault = error.message
            return grader_fault(error.message, kind=error.kind), time.monotonic() - started
        ctx.worker.deaths += error.worker_died
        what = {"timeout": "timed out", "memory": "ran out of memory", "crash": "crashed the worker",
                "protocol": "broke the worker protocol"}.get(error.kind, "raised an exception")
        outcome = Outcome("error", f"the submission {what}: {error.message}", {"kind": error.kind})
    except Exception as exc:  # a grader bug must not sink the report; it is recorded, not hidden
        outcome = grader_fault(f"internal grader error ({type(exc).__name__}: {exc}); please report it",
                               traceback=traceback.format_exc()[-3000:])
    return outcome, time.monotonic() - started


def check_points(status: str, max_points: float) -> float | None:
    """A verdict's points: all for a pass, none otherwise; a manual check's come from a person."""
    return {"passed": max_points, "manual": None}.get(status, 0.0)


def _result(check: Check, outcome: Outcome, rubric: Rubric) -> CheckResult:
    max_points = rubric.points[check.id]
    details = dict(outcome.details)
    fault = details.pop("fault", "submission") if outcome.status == "error" else None
    return CheckResult(check.id, check.title, outcome.status, check_points(outcome.status, max_points), max_points,
                       outcome.message, details, fault)


def rescore(report: Report, rubric: Rubric) -> Report:
    """`report` with `rubric`'s points and the same verdicts (its verdict digest matches): no sandbox run, no
    training. A TA's points stay; the caller re-applies the TA scores, which flags any above a new maximum."""
    for check in report.checks:
        max_points = rubric.points[check.id]
        if check.status != "manual":
            check.points = check_points(check.status, max_points)
        check.max_points = max_points
    report.fingerprint = {**report.fingerprint, "points": rubric.points_digest}
    return report


def grade_submission(path: str | Path, options: RunOptions | None = None, *, rubric: Rubric | None = None,
                     student_id: str | None = None, id_pattern: str | None = None, threads: int = 0,
                     gpu: str | None = None, expected: Expected | None = None, launched: Sandbox | None = None,
                     **settings: Any) -> Report:
    """Grade one submission; always returns a well-formed Report (never raises for bad input).

    `options` are the run's resolved options; a Python caller may give `resolve`'s keywords instead
    (`accuracy="off"`, `isolation=...`, `timeout=...`, `data_dir=...`). `threads` caps the worker's CPU
    threads (0: torch's default) and `gpu` picks the worker's GPU (CUDA_VISIBLE_DEVICES), for running
    several at once. `launched`: a sandbox whose worker was launched early (Sandbox.launch), used when its
    limits and isolation are this submission's; closed either way.
    """
    if options is None:
        options = resolve(**settings)
    elif settings:
        raise TypeError(f"grade_submission: give either options or {', '.join(settings)}, not both")
    rubric = rubric or load_rubric()
    started = time.monotonic()
    student = student_id or student_id_from_name(path, id_pattern)
    try:
        submission = load_submission(path, student, id_pattern)
    except IntakeError as error:
        if launched is not None:
            launched.close()
        return clean_report(Report.failure(student, str(path), str(error), environment=environment(),
                                           fingerprint=fingerprint(path, rubric, options.accuracy), fault="submission"))
    expected = expected or default_expected()
    expected.prefetch()  # the reference's values, computed while the worker starts and runs the first checks
    timings = {"intake": time.monotonic() - started}
    # The reference's run sets the pass mark: train it (or find it cached) while no student code runs.
    prepare_reference(rubric, options, expected)
    timings["reference"] = time.monotonic() - started - timings["intake"]
    limits = worker_limits(rubric, options, threads, gpu)
    with _sandbox(submission.code, limits, options.isolation, launched) as sandbox:
        report = _run_checks(submission, sandbox, rubric, options.timeout or rubric.limits["submission_timeout"],
                             timings, options, expected)
    timings["total"] = time.monotonic() - started
    report.timings = {k: round(v, 3) for k, v in timings.items()}
    report.code = submission.code
    return clean_report(report)  # the boundary: nothing the submission wrote reaches a file unsanitised


def _sandbox(code: str, limits: Limits, isolation: str | None, launched: Sandbox | None) -> Sandbox:
    """`launched` when it was started with these limits at this isolation level, else a new sandbox."""
    if launched is not None:
        if launched.limits == limits and launched.isolation == choose_level(isolation):
            launched.code = code
            return launched
        launched.close()
    return Sandbox(code, limits=limits, isolation=isolation)


def _run_checks(submission: Submission, sandbox: Sandbox, rubric: Rubric, timeout: float,
                timings: dict[str, float], options: RunOptions, expected: Expected | None) -> Report:
    deadline = time.monotonic() + timeout
    ctx = GradingContext(submission, sandbox, rubric, expected, options)
    warnings = list(submission.warnings)
    started = time.monotonic()
    _start(ctx)
    timings["worker_start"] = time.monotonic() - started
    trouble = _needs_float32(ctx)
    if trouble:
        sandbox.close()
        sandbox.dtype = "float32"
        _start(ctx)
        warnings.append(f"compared in float32 with looser tolerances: the model does not run in float64 ({trouble})")
    enabled = [c for c in CHECKS if rubric.enabled(c.id)]
    outcomes: dict[str, Outcome] = {}
    for check in enabled:
        outcomes[check.id], seconds = _outcome(check, ctx, deadline)
        timings[f"check:{check.id}"] = seconds
    excused = round(sandbox.stats.excused_seconds, 1)
    # Load-dependent, so with the timings, not a warning (the same submission gets the same report); a
    # timeout's own message says how much waiting was not counted.
    timings["grader_starved"] = excused
    if sandbox.isolation != "bwrap":
        warnings.append(f"sandbox isolation level '{sandbox.isolation}': student code was not fully isolated "
                        "(install bubblewrap for full isolation)")
    report = Report(
        student=submission.student_id,
        submission=submission.path,
        status="graded",
        checks=[_result(c, outcomes[c.id], rubric) for c in enabled],
        warnings=warnings,
        sandbox={"isolation": sandbox.isolation, "network": sandbox.isolation == "none",
                 "worker_starts": sandbox.stats.starts, "precision": sandbox.dtype,
                 "memory_limit_gib": rubric.limits["memory_gib"], "protections": sandbox.protections},
        environment={**environment(), "challenge": ctx.expected.challenge},
        answers=submission.answers,
        output=sandbox.output,
        fingerprint=fingerprint(Path(submission.path), rubric, options.accuracy, submission.digest),
    )
    report.attachments = _pictures(ctx.training)
    for tag, pictures in submission.answer_pictures.items():
        report.attachments.update(answer_picture_files(tag, pictures))
    return report


def _pictures(training: TrainingPictures | None) -> dict[str, bytes]:
    if training is None:
        return {}
    from grader.batch.pictures import training_pictures  # matplotlib and the handout's helpers, only when needed

    return training_pictures(training)


def fingerprint(path: str | Path, rubric: Rubric, accuracy: Accuracy, digest: str | None = None) -> dict[str, str]:
    """What a report depends on: resume regrades a student when any of it changes, except `points` (the
    rubric's points alone: resume re-scores the stored report). `accuracy` is the resolved mode
    (RunOptions.accuracy), the same on the driver and on any machine that grades."""
    if accuracy not in get_args(Accuracy):
        raise ValueError(f"fingerprint: accuracy {accuracy!r} is not a resolved mode (see grader.options.resolve)")
    if digest is None:
        try:
            digest = content_digest(Path(path))
        except OSError:
            digest = "unreadable"
    return {"submission": digest, "rubric": rubric.verdict_digest, "points": rubric.points_digest,
            "grader": __version__, "accuracy": accuracy}


def environment() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "grader_version": __version__}
