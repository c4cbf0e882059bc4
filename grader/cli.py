"""The `vitgrade` command line: thin wrappers over the Python API, one subcommand each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grader import __version__

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad arguments or unreadable input: exit code 2 with the message."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rubric", type=Path, help="rubric TOML (default: the bundled assignments/vit_cifar10/rubric.toml)")
    parser.add_argument("--isolation", choices=["bwrap", "unshare", "none"],
                        help="force a sandbox isolation level (default: the best available)")
    parser.add_argument("--accuracy", choices=["off", "quick", "full", "auto"], default="auto",
                        help="train the model and check its test accuracy (auto: full on CUDA, quick on CPU)")
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $VITGRADE_DATA or the user cache)")


def cmd_check(args: argparse.Namespace) -> int:
    from grader.grading import grade_submission
    from grader.render.junit import render_junit
    from grader.render.text import render_table
    from grader.report import write_atomic

    path = Path(args.submission)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    report = grade_submission(path, rubric=_rubric(args), student_id=args.student, isolation=args.isolation,
                              accuracy=args.accuracy, data_dir=args.data_dir)
    print(render_table(report))
    if args.json:
        write_atomic(args.json, report.to_json())
    if args.junit:
        write_atomic(args.junit, render_junit([report]))
    if report.status != "graded":
        return USAGE_ERROR
    return report.return_code


def cmd_grade(args: argparse.Namespace) -> int:
    from grader.batch import BatchOptions, grade_batch

    options = BatchOptions(
        out=args.out, rubric=_rubric(args), roster=args.roster, workers=args.workers, accuracy=args.accuracy,
        timeout=args.timeout, resume=args.resume, manual=args.manual, gradescope=args.gradescope,
        isolation=args.isolation, id_pattern=args.id_pattern, data_dir=args.data_dir, progress=not args.quiet,
    )
    try:
        summary = grade_batch(args.submissions, options)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(summary.describe())
    return 0


def _rubric(args: argparse.Namespace):
    from grader.rubric import RubricError, load_rubric

    try:
        return load_rubric(args.rubric)
    except RubricError as exc:
        raise UsageError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitgrade", description="Autograder for the ViT on CIFAR-10 assignment.")
    parser.add_argument("--version", action="version", version=f"vitgrade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="self-check one submission (exit 0: every automatic check passed)")
    check.add_argument("submission", help=".ipynb, .py, .zip or folder")
    check.add_argument("--json", type=Path, help="also write report.json here")
    check.add_argument("--junit", type=Path, help="also write JUnit XML here (for CI)")
    check.add_argument("--student", help="student id for the report (default: from the file name)")
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
    grade.add_argument("--id-pattern", help="regex with a group named 'id' to take student ids from file names")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(grade)
    grade.set_defaults(func=cmd_grade)
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
