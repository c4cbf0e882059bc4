"""The `vitgrade` command line: thin wrappers over the Python API, one subcommand each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from grader import __version__

if TYPE_CHECKING:
    from grader.options import RunOptions

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad arguments or unreadable input: exit code 2 with the message."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    from grader.options import ACCURACY_CHOICES

    parser.add_argument("--rubric", type=Path, help="rubric TOML (default: the bundled assignments/vit_cifar10/rubric.toml)")
    parser.add_argument("--isolation", choices=["bwrap", "unshare", "none"],
                        help="force a sandbox isolation level (default: the best available)")
    parser.add_argument("--accuracy", choices=ACCURACY_CHOICES, default="auto",
                        help="train the model and check its test accuracy (auto: full on CUDA, quick on CPU)")
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $VITGRADE_DATA or the user cache)")


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The run's options, resolved once here (`auto` included) and passed down unchanged."""
    from grader.options import resolve

    return resolve(args.accuracy, isolation=args.isolation, timeout=getattr(args, "timeout", None),
                   data_dir=args.data_dir, executor=getattr(args, "executor", "local"))


def _launch_worker(args: argparse.Namespace):
    """The sandbox's worker, launched before this process imports torch and the checks, so that both imports
    run at once (a check's latency is mostly imports; loading the rubric imports no torch). grade_submission
    uses the worker only if its limits are the submission's, else starts another. None where the limits need
    torch to decide (`auto` and `full` may use CUDA), for a rubric the usual path refuses, or nothing to grade."""
    from grader.rubric import RubricError, load_rubric
    from grader.rubric.limits import worker_limits
    from grader.sandbox import Sandbox, SandboxError

    if args.accuracy not in ("off", "quick") or not Path(args.submission).exists():
        return None
    try:  # the limits grade_submission will ask for (threads and GPU: its defaults, as _check calls it)
        sandbox = Sandbox("", limits=worker_limits(load_rubric(args.rubric), _run_options(args)),
                          isolation=args.isolation)
        sandbox.launch()
    except (RubricError, OSError, ArithmeticError, SandboxError):  # the usual path says why
        return None
    return sandbox


def cmd_check(args: argparse.Namespace) -> int:
    launched = _launch_worker(args)
    try:
        return _check(args, launched)
    finally:
        if launched is not None:
            launched.close()


def _check(args: argparse.Namespace, launched) -> int:
    path = Path(args.submission)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    rubric = _rubric(args)  # a usage error says so before torch and the checks are imported (seconds)

    from grader.batch.grading import grade_submission
    from grader.render.junit import render_junit
    from grader.render.student import notebook_language, outline
    from grader.render.text import render_table
    from grader.report import write_atomic
    from grader.rubric import instructor_only

    report = grade_submission(path, _run_options(args), rubric=rubric, student_id=args.student, launched=launched)
    lang = args.lang or notebook_language(path)
    print(render_table(report, lang=lang, outline=outline(report, instructor_only(rubric), lang)))
    if args.json:
        write_atomic(args.json, report.to_json())
    if args.junit:
        write_atomic(args.junit, render_junit([report]))
    if report.needs_regrade:  # the worker failed before the code was loaded, or the grader raised
        print("vitgrade: error: the grader failed, not the submission (no verdict); run `vitgrade doctor`",
              file=sys.stderr)
        return USAGE_ERROR
    if report.status != "graded":
        return USAGE_ERROR
    return report.return_code


def cmd_grade(args: argparse.Namespace) -> int:
    from grader.batch.discovery import discover

    try:  # a wrong path is a usage error before torch and the grader are imported (seconds)
        discover(args.submissions, args.id_pattern)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    from grader.batch.run import BatchOptions, grade_batch
    from grader.sandbox.preflight import GraderBroken

    run = _run_options(args)
    options = BatchOptions(
        out=args.out, run=run, rubric=_rubric(args) if args.rubric else None, roster=args.roster,
        workers=args.workers, resume=args.resume, manual=args.manual, gradescope=args.gradescope,
        id_pattern=args.id_pattern, progress=not args.quiet,
        submitted=args.submitted, extensions=args.extensions, worksheet=args.worksheet,
        challenge_seed=args.challenge_seed,
    )
    try:
        if run.executor == "ray":
            from grader.batch.ray_executor import ray_executor

            gpus = 1.0 if run.device == "cuda" else 0.0  # one GPU per task when training the full recipe
            summary = grade_batch(args.submissions, options, executor=ray_executor(args.ray_address, num_gpus=gpus))
        else:
            summary = grade_batch(args.submissions, options)
    except (FileNotFoundError, ValueError) as exc:  # LatePolicyError is a ValueError
        raise UsageError(str(exc)) from None
    except GraderBroken as exc:
        raise UsageError(str(exc)) from None
    print(summary.describe())
    if summary.collisions:  # graded under distinct ids, but the LMS ids need a person's look: never silent
        print(f"vitgrade: {len(summary.collisions)} student id collision(s); see above and summary.html",
              file=sys.stderr)
    return summary.return_code


def cmd_data(args: argparse.Namespace) -> int:
    from grader.training import data

    if args.action == "download":
        dataset = data.download(args.data_dir)
        print(f"CIFAR-10 ready: {len(dataset.x_train)} training and {len(dataset.x_test)} test images in {dataset.source}")
        return 0
    out = args.data_dir or data.default_data_dir()
    dataset = data.synthesize(args.train, args.test, seed=args.seed)
    written = []
    if args.format in ("npz", "both"):
        written.append(data.write_npz(dataset, out / "synthetic.npz"))
    if args.format in ("batches", "both"):
        written.append(data.write_batches(dataset, out))
    print(f"SYNTHETIC data (not CIFAR-10): {len(dataset.x_train)} training and {len(dataset.x_test)} test images "
          f"written to {', '.join(map(str, written))}")
    return 0


def _accuracy_spec(args: argparse.Namespace, run: RunOptions):
    from grader.training.calibration import AccuracySpec

    rubric = _rubric(args)
    mode = run.accuracy
    if mode not in rubric.accuracy:
        raise UsageError(f"the rubric has no [accuracy.{mode}] section (use --accuracy quick or full)")
    return AccuracySpec.from_rubric(rubric.accuracy, mode)


def _dataset(args: argparse.Namespace):
    from grader.training.data import DatasetMissing, find_dataset

    try:
        return find_dataset(args.data_dir)
    except DatasetMissing as exc:
        raise UsageError(str(exc)) from None


def _training_device(run: RunOptions) -> str:
    """The run's device, or the CPU where it has no GPU (train and calibrate run the full recipe there too)."""
    import torch

    return run.device if run.device != "cuda" or torch.cuda.is_available() else "cpu"


def cmd_train(args: argparse.Namespace) -> int:
    from grader.training.calibration import train_reference

    run = _run_options(args)
    spec = _accuracy_spec(args, run)
    dataset = _dataset(args)
    device = _training_device(run)
    if args.submission:
        from grader.batch.grading import grade_submission
        from grader.rubric import load_rubric

        rubric = load_rubric(args.rubric)
        rubric.points = {"load.code": 0, "load.definitions": 0, "train.accuracy": rubric.points.get("train.accuracy", 1)}
        report = grade_submission(args.submission, run, rubric=rubric)
        check = report.check("train.accuracy")
        print(check.message if check else report.error)
        if check and check.details.get("images_per_second"):
            print(f"{check.details['images_per_second']:,.0f} images/s on {check.details['device']}")
        return 0 if check and check.status == "passed" else 1
    trained = train_reference(dataset, spec, device, seed=spec.recipe.seed, progress=True)
    print(f"reference, {spec.mode} recipe on {dataset.name}: test accuracy {trained.accuracy:.1%} ({device})"
          + (f"; {trained.stopped}" if trained.stopped else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from grader.training.bench import bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    small = {"dim_hidden": 64, "num_heads": 4, "dim_feedforward": 128, "num_layers": 2}
    config = {} if args.config == "default" else small
    recipe = {"lr": 1e-3, "optimizer": "adamw", "schedule": "cosine", "augment": True}
    batch_sizes = args.batch_size or [512 if cuda else 256]
    # torch.compile pays on CUDA; on this project's 2-core CPU it gained 0-10 %, so the CPU shows both.
    modes = [None if m == "eager" else m for m in (args.compile_mode or (["default"] if cuda else ["eager", "default"]))]
    images = args.images or (20000 if cuda else 2000)
    result = bench(config, images, device, recipe, batch_sizes, modes, repeats=args.repeats,
                   fused_attention=args.fused_attention, profile=args.profile,
                   progress=lambda line: print(line, flush=True))
    print(result.describe())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from grader.rubric import DEFAULT_RUBRIC
    from grader.training.calibration import RecipeRefused, calibrate, write_margin

    run = _run_options(args)
    spec = _accuracy_spec(args, run)
    device = _training_device(run)
    if args.seeds < 2:
        raise UsageError("--seeds must be at least 2: the margin comes from the spread between seeds")
    try:
        result = calibrate(_dataset(args), spec, device, seeds=args.seeds, progress=True)
    except RecipeRefused as refused:
        print(f"vitgrade calibrate: refused: {refused}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    print(f"suggested [accuracy.{spec.mode}] margin = {result['suggested_margin']} (current {spec.margin})")
    if args.write:
        write_margin(args.rubric or DEFAULT_RUBRIC, args.write, spec.mode, result["suggested_margin"])
        print(f"wrote {args.write} with [accuracy.{spec.mode}] margin = {result['suggested_margin']}")
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    try:
        from grader.assign import LANGUAGES, assign
    except ImportError:
        raise UsageError("`vitgrade assign` needs the instructor's package (the student bundle cannot build "
                         "handouts)") from None
    languages = LANGUAGES if args.lang == "all" else (args.lang,)
    rubric = _rubric(args) if args.rubric else None  # validated before anything is built
    built = assign(args.out, languages, rubric.path if rubric else None)
    for path in built.files:
        print(path)
    print(f"built {len(built.files)} files under {args.out}: hand out {args.out / 'student'}, keep "
          f"{args.out / 'instructor'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from grader.doctor import diagnose
    from grader.rubric.limits import worker_limits

    run = _run_options(args)
    diagnosis = diagnose(worker_limits(_rubric(args), run), run.isolation, run.data_dir)
    print(diagnosis.describe())
    return 0 if diagnosis.ok else 1


def _now(args: argparse.Namespace):
    """--now (ISO 8601 with an offset) or the current time: when visibility after the deadline is decided."""
    from datetime import datetime, timezone

    from grader.rubric.late import LatePolicyError, parse_time

    if not getattr(args, "now", None):
        return datetime.now(timezone.utc)
    try:
        return parse_time(args.now, None, "--now")
    except LatePolicyError as exc:
        raise UsageError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    from grader.lms.common import ExportError

    try:
        if args.lms == "canvas":
            from grader.lms.canvas import export_canvas

            if not args.gradebook or not args.assignment:
                raise UsageError("export canvas needs --gradebook CSV (exported from Canvas) and --assignment NAME")
            result = export_canvas(args.graded, args.gradebook, args.assignment, args.out, scale=args.scale,
                                   allow_pending=args.allow_pending)
        elif args.lms == "moodle":
            from grader.lms.moodle import export_moodle

            if not args.worksheet:
                raise UsageError("export moodle needs --worksheet CSV (Moodle's 'Download grading worksheet')")
            result = export_moodle(args.graded, args.worksheet, args.out, _graded_rubric(args), now=_now(args),
                                   scale=args.scale, allow_pending=args.allow_pending,
                                   rubric_given=args.rubric is not None)
        else:
            return cmd_release(args)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print(result.describe())
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from grader.lms.common import ExportError, check_rubric, graded_reports
    from grader.lms.release import release

    rubric = _graded_rubric(args)
    try:
        reports = graded_reports(args.graded)
        notes = check_rubric(reports, rubric, explicit=args.rubric is not None)
        done = release(list(reports.values()), rubric, args.out, _now(args))
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print("\n".join([*notes, done.describe()]), end="")
    return 0


def cmd_gradescope(args: argparse.Namespace) -> int:
    from grader.lms.gradescope_autograder import build_autograder

    rubric = _rubric(args)
    path = build_autograder(args.out, rubric, accuracy=args.accuracy, timeout=args.timeout)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): upload it as the assignment's autograder "
          f"(rubric {rubric.path.name}, accuracy {args.accuracy})")
    return 0


def _graded_rubric(args: argparse.Namespace):
    """--rubric, else the rubric the graded folder was graded with (kept beside its reports), else the bundled one."""
    from grader.batch.output import RUBRIC_COPY

    stored = args.graded / RUBRIC_COPY
    if args.rubric is None and stored.is_file():
        args.rubric = stored
    return _rubric(args)


def _rubric(args: argparse.Namespace):
    from grader.rubric import RubricError, load_rubric

    try:
        return load_rubric(args.rubric)
    except RubricError as exc:
        raise UsageError(str(exc)) from None


def _id_pattern(text: str) -> str:
    import re

    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc})") from None
    if "id" not in compiled.groupindex:
        raise argparse.ArgumentTypeError("needs a group named 'id', e.g. '(?P<id>s\\d+)_'")
    return text


def build_parser() -> argparse.ArgumentParser:
    from grader.options import ACCURACY_CHOICES
    from grader.training.recipe import COMPILE_MODES

    parser = argparse.ArgumentParser(prog="vitgrade", description="Autograder for the ViT on CIFAR-10 assignment.")
    parser.add_argument("--version", action="version", version=f"vitgrade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="self-check one submission (exit 0: every automatic check passed)")
    check.add_argument("submission", help=".ipynb, .py, .zip or folder")
    check.add_argument("--json", type=Path, help="also write report.json here")
    check.add_argument("--junit", type=Path, help="also write JUnit XML here (for CI)")
    check.add_argument("--student", help="student id for the report (default: from the file name)")
    check.add_argument("--lang", choices=["en", "ja"],
                       help="language of the table (default: the handout notebook's, else English)")
    _add_common(check)
    check.set_defaults(func=cmd_check)

    grade = sub.add_parser("grade", help="grade a folder of submissions into reports and a gradebook")
    grade.add_argument("submissions", nargs="+", type=Path, help="a folder with one entry per student, or files/zips")
    grade.add_argument("--out", type=Path, required=True, help="output folder (reports, gradebook.csv, summary.html)")
    grade.add_argument("--roster", type=Path, help="CSV with a student_id column; absent students get a 'missing' row")
    grade.add_argument("--workers", type=int, default=0, help="parallel submissions (default: by CPU cores and GPUs)")
    grade.add_argument("--timeout", type=float, help="seconds per submission (default: the rubric's)")
    grade.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="skip students whose report is up to date (default: on)")
    grade.add_argument("--manual", type=Path, help="CSV of TA scores for manual checks to merge")
    grade.add_argument("--gradescope", action="store_true", help="also write Gradescope results.json per student")
    grade.add_argument("--id-pattern", type=_id_pattern,
                       help="regex with a group named 'id' to take student ids from file names")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")
    grade.add_argument("--submitted", type=Path, help="late policy: CSV of student_id, submitted_at (ISO 8601)")
    grade.add_argument("--extensions", type=Path, help="late policy: CSV of student_id, extension_hours")
    grade.add_argument("--worksheet", type=Path,
                       help="late policy: Moodle's grading worksheet (its 'Last modified (submission)' times)")
    grade.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local process pool (default) or a Ray cluster (pip install \"vit-autograder[ray]\")")
    grade.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray cluster)")
    grade.add_argument("--challenge-seed", type=int, metavar="N",
                       help="reuse a grading run's secret seed (from OUT/challenges.jsonl) to reproduce its reports; "
                            "default: a fresh secret seed per run")
    _add_common(grade)
    grade.set_defaults(func=cmd_grade)

    data = sub.add_parser("data", help="get CIFAR-10 (download) or make a small synthetic stand-in (synth)")
    data.add_argument("action", choices=["download", "synth"])
    data.add_argument("--data-dir", type=Path, help="where to put it (default: $VITGRADE_DATA or the user cache)")
    data.add_argument("--format", choices=["npz", "batches", "both"], default="both", help="synth: on-disk layout")
    data.add_argument("--train", type=int, default=5000, help="synth: training images")
    data.add_argument("--test", type=int, default=1000, help="synth: test images")
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train the reference (or a submission) with the rubric's recipe")
    train.add_argument("submission", nargs="?", help="a submission to train instead of the reference")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    bench_parser = sub.add_parser("bench", help="harness vs the handout's training loop: images/s and ratio")
    bench_parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench_parser.add_argument("--config", choices=["small", "default"], default="small")
    bench_parser.add_argument("--images", type=int, help="training images per loop")
    bench_parser.add_argument("--repeats", type=int, default=3, help="measurement rounds (the median is reported)")
    bench_parser.add_argument("--fused-attention", action="store_true",
                              help="harness model uses the reference's fused attention (an upper bound: student "
                                   "models keep their own attention)")
    bench_parser.add_argument("--profile", action="store_true",
                              help="also print where the first harness variant spends its time (torch.profiler)")
    bench_parser.add_argument("--batch-size", type=int, nargs="+", help="harness batch size(s) to measure")
    bench_parser.add_argument("--compile-mode", nargs="+", choices=["eager", *COMPILE_MODES],
                              help="harness torch.compile mode(s) to measure (default: default on CUDA, eager and default on "
                                   "CPU)")
    bench_parser.set_defaults(func=cmd_bench)

    assign_parser = sub.add_parser("assign", help="build the student/solution notebooks (ja, en), rubric and "
                                                  "self-check bundle")
    assign_parser.add_argument("--out", type=Path, required=True, help="output folder")
    assign_parser.add_argument("--lang", choices=["ja", "en", "all"], default="all")
    assign_parser.add_argument("--rubric", type=Path, help="the course rubric (default: the bundled one); the bundle "
                                                           "leaves out its hidden and after_due_date checks")
    assign_parser.set_defaults(func=cmd_assign)

    calibrate = sub.add_parser("calibrate", help="train the reference over several seeds; suggest the margin")
    calibrate.add_argument("--seeds", type=int, default=3, help="reference trainings, from the recipe's seed on")
    calibrate.add_argument("--write", type=Path, metavar="RUBRIC",
                           help="write the rubric in use to RUBRIC with the suggested margin (comments kept; "
                                "may be the --rubric file itself)")
    _add_common(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    doctor = sub.add_parser("doctor", help="what the grader sees here and whether it can grade (exit 0: it can)")
    _add_common(doctor)
    doctor.set_defaults(func=cmd_doctor)

    export = sub.add_parser("export", help="grades and feedback into an LMS's own import files (canvas, moodle) or "
                                           "a folder/zip of student feedback")
    export.add_argument("lms", choices=["canvas", "moodle", "folder"])
    export.add_argument("graded", type=Path, help="the output folder of vitgrade grade")
    export.add_argument("--out", type=Path, required=True,
                        help="canvas: the CSV to write; moodle: a folder (worksheet + feedback_files.zip); "
                             "folder: a folder or a .zip")
    export.add_argument("--gradebook", type=Path, help="canvas: the gradebook CSV exported from Canvas")
    export.add_argument("--assignment", help="canvas: the assignment's column (its name, full header or id)")
    export.add_argument("--worksheet", type=Path, help="moodle: the assignment's grading worksheet CSV")
    export.add_argument("--scale", action="store_true",
                        help="convert scores to the LMS's points possible / maximum grade")
    export.add_argument("--allow-pending", action="store_true",
                        help="also export students whose written answers still await a TA (partial scores)")
    export.add_argument("--now", help="decide after_due_date visibility at this time (ISO 8601 with offset)")
    export.add_argument("--rubric", type=Path, help="the rubric the class was graded with (visibility, deadline)")
    export.set_defaults(func=cmd_export)

    release_parser = sub.add_parser("release", help="student-facing copies of the reports, with a summary of "
                                                    "what is shown")
    release_parser.add_argument("graded", type=Path, help="the output folder of vitgrade grade")
    release_parser.add_argument("--out", type=Path, required=True, help="folder (or .zip) to write")
    release_parser.add_argument("--now", help="decide after_due_date visibility at this time (ISO 8601 with offset)")
    release_parser.add_argument("--rubric", type=Path, help="the rubric the class was graded with")
    release_parser.set_defaults(func=cmd_release)

    gradescope = sub.add_parser("gradescope", help="build Gradescope's autograder.zip (setup.sh, run_autograder, "
                                                   "this package, the rubric)")
    gradescope.add_argument("--out", type=Path, required=True, help="the zip to write (autograder.zip)")
    gradescope.add_argument("--rubric", type=Path, help="rubric to grade with (default: the bundled one)")
    gradescope.add_argument("--accuracy", choices=ACCURACY_CHOICES, default="auto",
                            help="accuracy mode on Gradescope (auto: full with CUDA, quick without)")
    gradescope.add_argument("--timeout", type=float, help="seconds per submission (default: the rubric's)")
    gradescope.set_defaults(func=cmd_gradescope)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"vitgrade: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("vitgrade: interrupted; finished reports are kept", file=sys.stderr)
        return 130
