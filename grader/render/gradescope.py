"""Gradescope's results.json (autograder specification): one test per check.

A test's `status` is optional in the specification; Gradescope then infers it from `score` and
`max_score`. A written answer awaiting a TA is neither passed nor failed: it gets no status and no
score (the top-level `score` is the total so far), and says that a person grades it. Once a TA's
points are merged, it has them as its score and Gradescope shows full or partial credit.
"""

from __future__ import annotations

import json

from grader.report import Report

VISIBILITY = "visible"


def render_gradescope(report: Report, visibility: dict[str, str] | None = None) -> str:
    """results.json; `visibility` (check id -> visible | after_due_date | hidden, the rubric's [visibility])
    sets each test's Gradescope visibility (default: visible)."""
    visibility = visibility or {}
    if report.status != "graded":
        return json.dumps({"score": 0.0, "output": f"The submission could not be graded: {report.error}",
                           "visibility": VISIBILITY, "tests": []}, indent=2)
    tests = []
    for check in report.checks:
        if check.status == "skipped":
            continue  # counts in neither score nor max score, as in report.json
        test = {"name": check.title, "number": check.id, "max_score": check.max_points,
                "output": f"[{check.status}] {check.message}", "visibility": visibility.get(check.id, VISIBILITY)}
        if check.status == "manual":  # the message says "awaiting a TA" or "graded by a TA: ..."
            test["output"] = check.message
            if check.points is not None:
                test["score"] = check.points
        else:
            test["status"] = "passed" if check.status == "passed" else "failed"
            test["score"] = check.points or 0.0
        tests.append(test)
    skipped = [f"{c.id}: {c.message}" for c in report.checks if c.status == "skipped"]
    output = "\n".join(["vitgrade " + report.grader_version, *report.warnings,
                        *(f"skipped {line}" for line in skipped)])
    return json.dumps({"score": report.score, "output": output, "visibility": VISIBILITY, "tests": tests,
                       "extra_data": {"sandbox": report.sandbox}}, indent=2, ensure_ascii=False)
