"""What a student sees of a self-check: labels in the handout's language, and what the score means.

A self-check cannot give the final grade: written answers are graded by a TA after submission, and
some checks (the accuracy check, the multiple-choice key) only by the instructor. The outline says
so with numbers that add up to the assignment's total, instead of one "56 / 70" that is neither.
"""

from __future__ import annotations

import json
from pathlib import Path

from grader.report import Report

LANGUAGES = ("en", "ja")
MAX_NOTEBOOK_BYTES = 50 * 1024**2

TEXT = {
    "en": {
        "check": "check", "status": "status", "points": "points", "message": "message",
        "automatic": "automatic checks: {score:g}/{max:g} points",
        "by_ta": "written answers ({ids}): {max:g} points, graded by your TA after you submit",
        "by_ta_done": "written answers ({ids}): {score:g}/{max:g} points, graded by a TA",
        "later": "graded by the instructor after you submit: {items}",
        "total": "the assignment is out of {total:g} points",
    },
    "ja": {
        "check": "チェック", "status": "結果", "points": "点数", "message": "メッセージ",
        "passed": "合格", "failed": "不合格", "error": "エラー", "skipped": "スキップ", "manual": "TA採点",  # statuses
        "automatic": "自動チェック: {score:g}/{max:g} 点",
        "by_ta": "記述式の解答（{ids}）: {max:g} 点、提出後に TA が採点します",
        "by_ta_done": "記述式の解答（{ids}）: {score:g}/{max:g} 点（TA 採点済み）",
        "later": "提出後に教員が採点: {items}",
        "total": "課題の満点は {total:g} 点です",
    },
}


def text(lang: str) -> dict[str, str]:
    return TEXT.get(lang, TEXT["en"])


def notebook_language(path: str | Path | None = None, notebook: dict | None = None) -> str:
    """The handout language a notebook was built in (`vitgrade assign` records it in the notebook's
    metadata), else English."""
    if notebook is None and path is not None:
        path = Path(path)
        try:
            if path.suffix.lower() != ".ipynb" or path.stat().st_size > MAX_NOTEBOOK_BYTES:
                return "en"
            notebook = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            return "en"
    metadata = notebook.get("metadata") if isinstance(notebook, dict) else None
    vitgrade = metadata.get("vitgrade") if isinstance(metadata, dict) else None
    lang = vitgrade.get("lang") if isinstance(vitgrade, dict) else None
    return lang if lang in LANGUAGES else "en"


def outline(report: Report, instructor_only: dict[str, float] | None = None, lang: str = "en") -> list[str]:
    """The score line of a self-check: automatic points, written answers for a TA, what the instructor grades
    later (skipped checks, and `instructor_only` checks the student's rubric leaves out), and the total."""
    words = text(lang)
    automatic = [c for c in report.checks if c.status not in ("skipped", "manual")]
    written = [c for c in report.checks if c.status == "manual"]
    later = {c.id: c.max_points for c in report.checks if c.status == "skipped"}
    later.update(instructor_only or {})
    lines = [words["automatic"].format(score=sum(c.points or 0.0 for c in automatic),
                                       max=sum(c.max_points for c in automatic))]
    if written:
        done = all(c.points is not None for c in written)
        lines.append(words["by_ta_done" if done else "by_ta"].format(
            ids=", ".join(c.id for c in written), score=sum(c.points or 0.0 for c in written),
            max=sum(c.max_points for c in written)))
    if later:
        unit = "点" if lang == "ja" else " points"
        lines.append(words["later"].format(items=", ".join(f"{cid} ({points:g}{unit})" for cid, points in later.items())))
    total = sum(c.max_points for c in automatic + written) + sum(later.values())
    lines.append(words["total"].format(total=total))
    return lines
