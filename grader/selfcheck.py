"""The notebook's self-check cell: run `vitgrade check` on the saved notebook and show a table."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from grader.report import Report


def _colab_notebook() -> dict | None:
    """The open notebook as Colab's front end holds it (Colab keeps no .ipynb on the runtime's disk), or None
    outside Colab. `get_ipynb` is the request Colab's own tools use; it is not a documented API."""
    try:
        from google.colab import _message
    except ImportError:
        return None
    reply = _message.blocking_request("get_ipynb", timeout_sec=60)
    return reply.get("ipynb") if isinstance(reply, dict) else None


def check_notebook(path: str | Path, accuracy: str = "off", lang: str | None = None) -> Report:
    """Grade the saved notebook at `path` as `vitgrade check` does and display the result.

    Training is off by default (it takes minutes); `accuracy="quick"` runs it on the CPU. The table is
    in the notebook's language (`lang` overrides it).
    """
    import pandas as pd

    from grader.batch.grading import grade_submission
    from grader.options import resolve
    from grader.render.student import notebook_language, outline, text
    from grader.render.text import SYMBOLS, points_text, render_table
    from grader.rubric import instructor_only, load_rubric

    path = Path(path)
    rubric = load_rubric()
    with tempfile.TemporaryDirectory(prefix="vitgrade-selfcheck-") as scratch:
        live = None
        if not path.exists():
            live = _colab_notebook()
            if live is None:
                raise FileNotFoundError(f"{path} not found: save the notebook and pass its file name")
            path = Path(scratch) / path.name  # the student id comes from the file name, as when submitted
            path.write_text(json.dumps(live, ensure_ascii=False), encoding="utf-8")
        lang = lang or notebook_language(path, live)
        report = grade_submission(path, resolve(accuracy), rubric=rubric)
    summary = outline(report, instructor_only(rubric), lang)
    try:
        from IPython.display import Markdown, display
    except ImportError:  # a plain Python session
        print(render_table(report, lang=lang, outline=summary))
        return report
    words = text(lang)
    rows = [{words["check"]: c.id, words["status"]: words.get(c.status, SYMBOLS[c.status]),
             words["points"]: points_text(c.points, c.max_points), words["message"]: c.message} for c in report.checks]
    display(Markdown(f"**{report.student}**" + (f" — {report.error}" if report.error else "")
                     + "".join(f"\n- {line}" for line in summary if report.status == "graded")))
    if rows:
        display(pd.DataFrame(rows).style.hide(axis="index").set_properties(**{"text-align": "left"}))
    for warning in report.warnings:
        display(Markdown(f"- warning: {warning}"))
    return report
