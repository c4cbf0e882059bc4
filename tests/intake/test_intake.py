"""Intake over real notebook files and every kind of bad input."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import nbformat
import pytest

from grader.intake import IntakeError, load_submission
from grader.intake.naming import student_id_from_name

from ..conftest import EXAMPLES, HANDOUT_SOURCE


def write_notebook(path: Path, cells: list[tuple[str, str]], tags: dict[int, list[str]] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    for index, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if tags and index in tags:
            cell.metadata["tags"] = tags[index]
        nb.cells.append(cell)
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


def test_handout_notebook_keeps_definitions_and_drops_training(tmp_path):
    submission = load_submission(EXAMPLES / "s1001_handout.ipynb")
    assert submission.student_id == "s1001_handout"
    for name in ("ViT", "TransformerEncoderLayer", "SelfAttention", "FNN"):
        assert f"class {name}(nn.Module)" in submission.code
    assert "assert torch.cuda.is_available()" not in submission.code
    assert "for epoch in range(max_epoch)" not in submission.code
    assert "CIFAR10(" not in submission.code
    assert "pip install" not in submission.code
    assert any("top-level statements" in w for w in submission.warnings)


def test_magics_shell_lines_and_cell_magics(tmp_path):
    path = write_notebook(tmp_path / "magic.ipynb", [
        ("code", "%matplotlib inline\n!pip install timm\nimport torch\nfiles = !ls"),
        ("code", "%%bash\necho hi"),
        ("code", "%%time\nclass Block(torch.nn.Module):\n    pass"),
        ("code", "def f():\n    if True:\n        !echo inside\n    return 1"),
    ])
    submission = load_submission(path)
    assert "import torch" in submission.code
    assert "class Block" in submission.code
    assert "def f():" in submission.code
    assert "echo" not in submission.code and "%" not in submission.code


def test_cell_that_does_not_parse_is_skipped_with_a_warning(tmp_path):
    path = write_notebook(tmp_path / "broken.ipynb", [
        ("markdown", "# My ViT"), ("code", "import torch"), ("markdown", "The model:"),
        ("code", "class FNN(torch.nn.Module)\n    pass"), ("code", "def ok():\n    return 1")])
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[3].execution_count = 7
    nbformat.write(notebook, path)
    submission = load_submission(path)
    assert "def ok" in submission.code and "class FNN" not in submission.code
    # Named as the student sees it: markdown cells do not count, and Jupyter's In [n] when the cell ran.
    assert any("code cell 2 (In [7]): skipped, it does not parse" in w for w in submission.warnings)


def test_class_defined_twice_last_definition_wins_and_warns(tmp_path):
    path = write_notebook(tmp_path / "twice.ipynb", [
        ("code", "class FNN:\n    version = 1"), ("code", "class FNN:\n    version = 2")])
    submission = load_submission(path)
    namespace: dict = {}
    exec(submission.code, namespace)
    assert namespace["FNN"].version == 2
    assert any("class FNN is defined 2 times" in w for w in submission.warnings)


def test_simple_constants_are_kept_and_calls_are_dropped(tmp_path):
    path = tmp_path / "consts.py"
    path.write_text("import torch\nDIM = 512\nHEADS = DIM // 64\ndevice = torch.device('cpu')\n"
                    "net = torch.nn.Linear(2, 2)\nprint(net)\n", encoding="utf-8")
    code = load_submission(path).code
    assert "DIM = 512" in code and "HEADS = DIM // 64" in code and "device = torch.device" in code
    assert "net =" not in code and "print" not in code


def test_written_answers_are_collected_from_tagged_cells(tmp_path):
    path = write_notebook(tmp_path / "answers.ipynb", [
        ("code", "def helper():\n    return 1"), ("markdown", "Value is the output."), ("markdown", "Heatmap answer")],
        tags={1: ["task2"], 2: ["task3"]})
    submission = load_submission(path)
    assert submission.answers == {"task2": "Value is the output.", "task3": "Heatmap answer"}


def test_nbformat_3_notebooks_are_upgraded(tmp_path):
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "import torch\nclass FNN(torch.nn.Module):\n    pass", "language": "python",
         "outputs": [], "metadata": {}}]}]}
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(v3), encoding="utf-8")
    assert "class FNN" in load_submission(path).code


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a valid notebook: JSON error at line 1"),
    ('{"hello": 1}', "not a Jupyter notebook"),
])
def test_invalid_notebooks(tmp_path, content, message):
    path = tmp_path / "bad.ipynb"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IntakeError, match=message):
        load_submission(path)


def test_notebook_without_code(tmp_path):
    path = write_notebook(tmp_path / "prose.ipynb", [("markdown", "# only words")])
    with pytest.raises(IntakeError, match="has no code cells"):
        load_submission(path)


def test_binary_file(tmp_path):
    path = tmp_path / "model.py"
    path.write_bytes(b"\x7fELF\x00\x00\x01" + os.urandom(100))
    with pytest.raises(IntakeError, match="binary file"):
        load_submission(path)


def test_unsupported_type_and_missing_path(tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(IntakeError, match="unsupported file type .pdf"):
        load_submission(tmp_path / "report.pdf")
    with pytest.raises(IntakeError, match="does not exist"):
        load_submission(tmp_path / "nothing.ipynb")


def test_empty_folder(tmp_path):
    (tmp_path / "s1").mkdir()
    with pytest.raises(IntakeError, match="contains no notebook"):
        load_submission(tmp_path / "s1")


def test_two_notebooks_in_a_folder_pick_the_one_with_the_classes(tmp_path):
    folder = tmp_path / "s2"
    folder.mkdir()
    write_notebook(folder / "scratch.ipynb", [("code", "x = 1")])
    write_notebook(folder / "final.ipynb", [("code", HANDOUT_SOURCE)])
    os.utime(folder / "scratch.ipynb", (2e9, 2e9))  # newer, but defines nothing
    submission = load_submission(folder)
    assert "class ViT" in submission.code
    assert any("2 notebooks found; graded final.ipynb" in w and "scratch.ipynb" in w for w in submission.warnings)


def test_folder_of_python_files_drops_local_imports(tmp_path):
    submission = load_submission(EXAMPLES / "s1003_loop_heads")
    assert "from model import" not in submission.code
    assert "class SelfAttention" in submission.code


def test_symlink_in_folder_pointing_outside_is_ignored(tmp_path):
    folder = tmp_path / "s3"
    folder.mkdir()
    (folder / "model.py").write_text(HANDOUT_SOURCE, encoding="utf-8")
    secret = tmp_path / "secret.py"
    secret.write_text("SECRET = 1\n", encoding="utf-8")
    (folder / "link.py").symlink_to(secret)
    submission = load_submission(folder)
    assert "SECRET" not in submission.code
    assert any("symbolic link" in w for w in submission.warnings)


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_from_an_lms(tmp_path):
    archive = _zip(tmp_path / "Jane Doe_123456_assignsubmission_file_.zip",
                   {"vit/ViT.ipynb": (EXAMPLES / "s1001_handout.ipynb").read_bytes(), "__MACOSX/._ViT.ipynb": b"junk"})
    submission = load_submission(archive)
    assert submission.student_id == "123456"
    assert "class ViT" in submission.code


def test_zip_with_path_traversal_is_refused(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"../../outside.py": b"print(1)", "ok.py": b"x = 1"})
    with pytest.raises(IntakeError, match="unsafe path"):
        load_submission(archive)
    assert not (tmp_path.parent / "outside.py").exists()


def test_zip_bomb_is_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"a.py": b"0" * (150 * 1024**2)})
    assert archive.stat().st_size < 1024**2
    with pytest.raises(IntakeError, match="zip bomb|over the limit"):
        load_submission(archive)


def test_corrupt_zip(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(IntakeError, match="not a readable zip archive"):
        load_submission(path)


@pytest.mark.parametrize("name, expected", [
    ("s1234.ipynb", "s1234"),
    ("Jane Doe_123456_assignsubmission_file_", "123456"),
    ("doejane_LATE_98765_4321_vit.ipynb", "98765"),
    ("submission_1234567", "submission_1234567"),
    ("山田 太郎.ipynb", "山田_太郎"),
    ("../../etc/passwd", "passwd"),
    ("...", "unnamed"),
])
def test_student_ids_from_names(name, expected):
    assert student_id_from_name(name) == expected


def test_custom_id_pattern():
    assert student_id_from_name("hw3-A0123-final.ipynb", r"hw3-(?P<id>A\d+)") == "A0123"


def test_non_ascii_file_name_is_graded(tmp_path):
    path = tmp_path / "ビジョン トランスフォーマー.py"
    path.write_text(HANDOUT_SOURCE, encoding="utf-8")
    submission = load_submission(path)
    assert submission.student_id == "ビジョン_トランスフォーマー"


def test_only_what_the_required_classes_reach_is_kept(tmp_path):
    path = tmp_path / "extra.py"
    path.write_text(HANDOUT_SOURCE + "\nimport pandas as pd\nimport matplotlib.pyplot as plt\n"
                    "def plot(x):\n    plt.imshow(x)\n\nWIDTH = 3\ndef helper():\n    return WIDTH\n"
                    "class FNN(FNN):\n    scale = helper()\n", encoding="utf-8")
    code = load_submission(path).code
    assert "pandas" not in code and "matplotlib" not in code and "def plot" not in code
    assert "def helper" in code and "WIDTH = 3" in code and "import torch" in code


def test_without_required_classes_everything_defined_is_kept(tmp_path):
    path = tmp_path / "renamed.py"
    path.write_text("import torch\nclass VisionTransformer(torch.nn.Module):\n    pass\n", encoding="utf-8")
    assert "class VisionTransformer" in load_submission(path).code


def test_decorated_definitions_keep_their_decorators(tmp_path):
    path = tmp_path / "deco.py"
    path.write_text("from dataclasses import dataclass\n\n@dataclass\nclass Config:\n    dim: int = 8\n\n"
                    "class FNN:\n    config = Config()\n")
    assert "@dataclass\nclass Config" in load_submission(path).code


def test_parse_runs_alone_and_repeats_a_parse_that_met_cpythons_thread_race(monkeypatch):
    """CPython 3.11's ast.parse can raise SystemError when another thread converts an AST at the same time
    (python/cpython#106905; it failed a correct submission's static.forbidden in CI): our parse runs with the
    collector off (no finalizer can hand the GIL to another thread half-way) and repeats a parse that met it."""
    import ast
    import gc

    from grader.intake import code

    calls = []

    def racy_parse(source):
        calls.append(gc.isenabled())
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=39, after=55)")
        return ast.Module(body=[], type_ignores=[])

    monkeypatch.setattr(code.ast, "parse", racy_parse)
    assert isinstance(code.parse("x = 1"), ast.Module)
    assert calls == [False, False] and gc.isenabled()

    def broken_parse(source):
        raise SystemError("something else")

    monkeypatch.setattr(code.ast, "parse", broken_parse)
    with pytest.raises(SystemError, match="something else"):
        code.parse("x = 1")
    assert gc.isenabled()
