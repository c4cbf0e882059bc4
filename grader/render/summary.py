"""summary.html: the class overview (scores, pass rate per check, slow submissions, isolation, similarity)."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from grader.render.figures import pass_rate_png, score_histogram_png
from grader.render.html import data_uri, render_page
from grader.report import Report


def _share(check) -> float:
    if check.status == "manual":
        return check.points / check.max_points if check.max_points else 1.0
    return float(check.status == "passed")


def render_summary(reports: list[Report], frame: pd.DataFrame, check_ids: list[str],
                   pairs: list, problems: list[str]) -> str:
    """The page; `pairs` are the batch's similar submissions (grader.batch.similarity.SimilarPair)."""
    graded = [r for r in reports if r.status == "graded"]
    rates = {}
    for check_id in check_ids:
        results = [c for r in graded for c in r.checks if c.id == check_id and c.status != "skipped"
                   and (c.status != "manual" or c.points is not None)]
        if results:  # a written answer a TA graded counts by its share of the points
            rates[check_id] = sum(_share(c) for c in results) / len(results)
    max_score = max((r.max_score for r in graded), default=0.0)
    pictures = [(name, data_uri(png)) for name, png in (
        ("scores", score_histogram_png([r.score for r in graded], max_score)),
        ("pass rate per check", pass_rate_png(rates))) if png]
    slowest = sorted(graded, key=lambda r: -r.timings.get("total", 0.0))[:10]
    statuses = Counter(r.status for r in reports)
    isolation = Counter(r.sandbox.get("isolation", "n/a") for r in graded)
    return render_page("summary.html.j2", reports=reports, graded=graded, statuses=statuses, isolation=isolation,
                       pictures=pictures, slowest=slowest, pairs=pairs, rates=rates, problems=problems,
                       mean=(sum(r.score for r in graded) / len(graded)) if graded else 0.0, max_score=max_score,
                       errors=[r for r in reports if r.status == "error"],
                       awaiting_ta=sum(c.status == "manual" and c.points is None for r in graded for c in r.checks))
