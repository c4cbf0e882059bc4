"""The HTML pages in a real browser (headless Chromium): offline, every image loads, no console errors.

A screenshot of each page type is taken; with VITGRADE_UPDATE_SCREENSHOTS=1 they replace the
README's pictures in docs/screenshots/.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from grader.batch.run import BatchOptions, grade_batch

from ..conftest import EXAMPLES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")]


def _with_pasted_diagram(source: Path, target: Path) -> None:
    """The notebook with a drawn diagram pasted into 課題1's diagram cell (as Jupyter stores a paste)."""
    import base64
    import io

    import nbformat
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (640, 120), "white")
    draw = ImageDraw.Draw(picture)
    for i, label in enumerate(["(B,3,32,32)", "(B,64,48)", "(B,65,512)", "x6 layers", "(B,10)"]):
        draw.rectangle((10 + 125 * i, 35, 115 + 125 * i, 85), outline="black", width=2)
        draw.text((20 + 125 * i, 52), label, fill="black")
    png = io.BytesIO()
    picture.save(png, "PNG")
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if "task1-diagram" in c.metadata.get("tags", []))
    cell.source += "\n\n![image.png](attachment:image.png)"
    cell.attachments = {"image.png": {"image/png": base64.b64encode(png.getvalue()).decode()}}
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """A graded class with a trained model's pictures, so every kind of content is on a page."""
    from grader.training import data

    from ..checks.test_accuracy_integrity import easy_dataset

    root = tmp_path_factory.mktemp("html")
    data.write_npz(easy_dataset(), root / "data" / "easy.npz")
    submissions = root / "subs"
    submissions.mkdir()
    _with_pasted_diagram(EXAMPLES / "s1004_handout_ja_filled.ipynb", submissions / "s1004.ipynb")
    shutil.copy(EXAMPLES / "s2002_textbook_residual.py", submissions / "s2002.py")
    (submissions / "s3003.ipynb").write_text("{broken", encoding="utf-8")
    from grader.rubric import load_rubric

    # The pages need a trained model's pictures, not a good model: the small model and data the accuracy
    # tests train in seconds (tests/checks/test_accuracy_integrity.py), with the shipped number of attention maps.
    rubric = load_rubric()
    quick = rubric.accuracy["quick"]
    quick.update(train_images=600, test_images=200, margin=0.1,
                 config={**quick["config"], "dim_hidden": 32, "num_heads": 2, "dim_feedforward": 64, "num_layers": 1})
    quick["recipe"] = dataclasses.replace(quick["recipe"], epochs=1, min_steps=100, batch_size=64, lr=0.004,
                                          max_seconds=900)
    out = root / "out"
    # Two workers of one torch thread each (a worker's threads are the cores over the workers): one training
    # thread per core, which a busy machine slows far less than two per worker.
    grade_batch([submissions], BatchOptions(out=out, rubric=rubric, accuracy="quick", data_dir=root / "data",
                                            progress=False, workers=2))
    return {"summary": out / "summary.html", "report": out / "students/s1004/report.html",
            "ta-sheet": out / "ta_sheet.html",
            "report-failing": out / "students/s2002/report.html", "report-error": out / "students/s3003/report.html"}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page_name", ["summary", "report", "report-failing", "report-error", "ta-sheet"])
def test_page_renders_offline_with_every_image_and_no_errors(pages, browser, page_name, tmp_path):
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    external: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: external.append(request.url)
            if not request.url.startswith(("file:", "data:")) else None)
    page.goto(pages[page_name].as_uri(), wait_until="load")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert errors == [] and external == []
    assert all(complete and width > 0 for complete, width in images)
    if page_name in ("summary", "report"):
        assert len(images) >= 2  # summary: score histogram and pass rates; report: curve and attention maps
    if page_name == "ta-sheet":
        assert len(images) == 1  # the diagram pasted into s1004's notebook
    assert page.locator("table").count() >= (0 if page_name == "report-error" else 1)
    folder = DOCS_SCREENSHOTS if os.environ.get("VITGRADE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{page_name}.png"), full_page=False)
    assert (folder / f"{page_name}.png").stat().st_size > 10_000
    context.close()
