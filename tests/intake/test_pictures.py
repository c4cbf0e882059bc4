"""Pictures in written answers: found in attachments, data URIs and files; hostile ones refused; shown to TAs."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from grader.cli import main
from grader.intake import load_submission
from grader.intake.pictures import MAX_PICTURES, MAX_SIDE, PictureError, extract_pictures, to_png

from ..conftest import EXAMPLES

DIAGRAM_CELL = "task1-diagram"


def png(width: int = 40, height: int = 20, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny file that claims a huge picture: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def solution_notebook(diagram_source: str, attachments: dict | None = None) -> nbformat.NotebookNode:
    """The filled Japanese handout with the diagram cell replaced."""
    nb = nbformat.read(EXAMPLES / "s1004_handout_ja_filled.ipynb", as_version=4)
    cell = next(c for c in nb.cells if DIAGRAM_CELL in c.metadata.get("tags", []))
    cell.source = diagram_source
    if attachments:
        cell.attachments = attachments
    return nb


def test_pasted_attachment_becomes_a_png_and_the_text_says_where():
    found = extract_pictures("My diagram:\n![image.png](attachment:image.png)\nsee above",
                             {"image.png": {"image/png": b64(png(30, 10))}})
    assert found.text == "My diagram:\n[picture 1]\nsee above" and found.warnings == []
    assert size_of(found.pictures[0]) == (30, 10)


def test_colab_inline_picture_is_taken_out_of_the_text():
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 90, 200)).save(jpeg, "JPEG")
    found = extract_pictures(f'![image.png](data:image/jpeg;base64,{b64(jpeg.getvalue())})')
    assert found.text == "[picture 1]" and len(found.pictures) == 1
    assert found.pictures[0].startswith(b"\x89PNG")  # re-encoded, never the student's bytes


def test_unreferenced_attachments_and_html_img_tags_are_shown_too():
    found = extract_pictures('<img src="attachment:a.png" width="200">',
                             {"a.png": {"image/png": b64(png())}, "b.png": {"image/png": b64(png())}})
    assert found.text == "[picture 1]\n[picture 2]" and len(found.pictures) == 2


def test_a_diagram_drawn_in_a_code_cell_is_taken_from_its_output(tmp_path):
    nb = solution_notebook("")
    index = next(i for i, c in enumerate(nb.cells) if DIAGRAM_CELL in c.metadata.get("tags", []))
    drawing = nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1])", metadata={
        "tags": ["task1", DIAGRAM_CELL]}, outputs=[
        nbformat.v4.new_output("stream", text="drawing\n"),
        nbformat.v4.new_output("display_data", data={"image/png": b64(png(30, 20)), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "%%% not base64"})])
    nb.cells[index] = drawing
    nbformat.write(nb, tmp_path / "s.ipynb")
    submission = load_submission(tmp_path / "s.ipynb")
    assert submission.answers[DIAGRAM_CELL] == drawing.source  # a code answer stays as written
    assert [size_of(p) for p in submission.answer_pictures[DIAGRAM_CELL]] == [(30, 20)]
    assert any("output 3 not shown" in w for w in submission.warnings)


def test_web_addresses_are_left_as_text_and_never_fetched():
    text = "![diagram](https://example.com/d.png)"
    assert extract_pictures(text).text == text and extract_pictures(text).pictures == []


def test_large_picture_is_scaled_down():
    assert max(size_of(to_png(png(4000, 1000)))) == MAX_SIDE


def test_phone_photo_is_turned_the_right_way_up():
    photo = Image.new("RGB", (60, 20), (10, 10, 10))
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show rotated by 90 degrees
    out = io.BytesIO()
    photo.save(out, "JPEG", exif=exif)
    assert size_of(to_png(out.getvalue())) == (20, 60)


@pytest.mark.parametrize("data, message", [
    (b"not a picture at all", "not a readable picture"),
    (png_header_only(50_000, 50_000), "over the limit"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "not a readable picture"),
    (png()[:60], "not a readable picture"),
])
def test_hostile_or_broken_pictures_are_refused_with_a_reason(data, message):
    with pytest.raises(PictureError, match=message):
        to_png(data)
    found = extract_pictures("![x](attachment:x.png)", {"x.png": {"image/png": b64(data)}})
    assert found.pictures == [] and found.text == "[picture not shown]"
    assert len(found.warnings) == 1 and message in found.warnings[0]


def test_too_many_pictures_are_cut_with_a_warning():
    attachments = {f"{i}.png": {"image/png": b64(png())} for i in range(MAX_PICTURES + 2)}
    found = extract_pictures("", attachments)
    assert len(found.pictures) == MAX_PICTURES and len(found.warnings) == 2


def test_picture_files_must_be_inside_the_submission(tmp_path):
    folder = tmp_path / "sub"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "my diagram.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    found = extract_pictures("![](img/my%20diagram.png) ![](../secret.png) ![](link.png) ![](missing.png)",
                             notebook_dir=folder, root=folder)
    assert found.text == "[picture 1] [picture not shown] [picture not shown] [picture not shown]"
    assert len(found.pictures) == 1 and len(found.warnings) == 3
    assert "outside the submission" in found.warnings[0] and "outside the submission" in found.warnings[1]
    assert "not a file" in found.warnings[2]
    alone = extract_pictures("![](img/my%20diagram.png)", notebook_dir=folder)  # a lone notebook carries no files
    assert alone.pictures == [] and "lone .ipynb cannot carry files" in alone.warnings[0]


def test_zip_with_a_diagram_file_beside_the_notebook(tmp_path):
    nb = solution_notebook("**課題１ (1)**\n\n![diagram](diagram.png)")
    archive = tmp_path / "s0001.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("work/vit.ipynb", nbformat.writes(nb))
        zf.writestr("work/diagram.png", png(64, 32))
    submission = load_submission(archive)
    assert "[picture 1]" in submission.answers[DIAGRAM_CELL]
    assert [size_of(p) for p in submission.answer_pictures[DIAGRAM_CELL]] == [(64, 32)]


def test_hostile_tags_are_not_answers(tmp_path):
    nb = solution_notebook("answer", {"a.png": {"image/png": b64(png())}})
    nb.cells[0].metadata["tags"] = ["task1-../../../evil", "task1 diagram", 7]
    path = tmp_path / "s.ipynb"
    nbformat.write(nb, path)
    submission = load_submission(path)
    assert "task1-../../../evil" not in submission.answers and list(submission.answer_pictures) == [DIAGRAM_CELL]


@pytest.mark.slow
def test_pictures_reach_the_report_the_ta_sheet_and_survive_the_merge(tmp_path):
    nb = solution_notebook("**課題１ (1)**\n\n![image.png](attachment:image.png)",
                           {"image.png": {"image/png": b64(png(50, 25))}})
    submissions, out = tmp_path / "submissions", tmp_path / "out"
    submissions.mkdir()
    nbformat.write(nb, submissions / "s0001.ipynb")
    assert main(["grade", str(submissions), "--out", str(out), "--accuracy", "off", "--quiet"]) == 0
    folder = out / "students/s0001"
    name = f"answer-{DIAGRAM_CELL}-1.png"
    assert size_of((folder / name).read_bytes()) == (50, 25)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    diagram = next(c for c in report["checks"] if c["id"] == "task1.diagram")
    assert diagram["details"]["pictures"] == [name] and "1 picture" in diagram["message"]
    sheet = pd.read_csv(out / "ta_sheet.csv", dtype=str, keep_default_na=False).set_index("check_id")
    assert sheet.loc["task1.diagram", "pictures"] == f"students/s0001/{name}"
    assert f'src="students/s0001/{name}"' in (out / "ta_sheet.html").read_text(encoding="utf-8")
    assert f"![{name}]({name})" in (folder / "report.md").read_text(encoding="utf-8")
    assert (folder / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 1

    sheet.loc["task1.diagram", "points"] = "4"
    sheet.reset_index().to_csv(tmp_path / "graded.csv", index=False)
    assert main(["grade", str(submissions), "--out", str(out), "--accuracy", "off", "--quiet",
                 "--manual", str(tmp_path / "graded.csv")]) == 0
    assert (folder / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 1

    nbformat.write(solution_notebook("a diagram in words"), submissions / "s0001.ipynb")  # resubmitted
    assert main(["grade", str(submissions), "--out", str(out), "--accuracy", "off", "--quiet"]) == 0
    assert not (folder / name).exists()  # the earlier picture is not shown with the new answer


def test_pictures_written_inside_code_are_text():
    text = "Paste it (`![図](diagram.png)`), or:\n```\n![x](attachment:x.png)\n```"
    found = extract_pictures(text, notebook_dir=Path("."))
    assert found.text == text and found.pictures == [] and found.warnings == []


# Pieces of markdown and of picture references, shuffled into answers no student would write.
PIECES = list("![]()<>\"'`:;,/.%\x00aé図 \n") + ["attachment:a", "data:image/png;base64,iVBOR", "<img src='", "../",
                                                 "http://x", "a.png"]
ATTACHMENTS = st.dictionaries(st.text(max_size=5), st.one_of(
    st.none(), st.text(max_size=10),
    st.dictionaries(st.sampled_from(["image/png", "text/plain", "x"]), st.one_of(st.text(max_size=20),
                                                                                 st.lists(st.integers())))))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(PIECES), max_size=40).map("".join), attachments=ATTACHMENTS)
def test_any_answer_gives_text_and_warnings_never_an_exception(tmp_path, text, attachments):
    found = extract_pictures(text, attachments, notebook_dir=tmp_path, root=tmp_path)
    assert isinstance(found.text, str) and len(found.pictures) <= MAX_PICTURES
    assert all(isinstance(warning, str) for warning in found.warnings)
