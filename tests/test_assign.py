"""vitgrade assign: the ja/en notebooks, the solution, the written tasks, the student bundle and its checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.batch.grading import grade_submission
from grader.bundle import wheel_name
from grader.cli import main
from grader.expected import VectorExpected
from grader.handout import LANGUAGES, build_notebook
from grader.rubric import load_rubric

from .conftest import EXAMPLES

AUTOMATIC_TASKS = ("task1.shapes", "task2.choice")
MANUAL_TASKS = ("task1.diagram", "task2.explanation", "task3.answer")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("assign")
    assert main(["assign", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def instructor_report():
    """The instructor's grading (accuracy off) of a submission, graded once for the module and shared by the tests
    that read it (a report is deterministic: tests/batch/test_adversarial.py::test_grading_is_deterministic)."""
    reports: dict[Path, object] = {}

    def grade(path: Path):
        if path not in reports:
            reports[path] = grade_submission(path, accuracy="off")
        return reports[path]

    return grade


def _shape(notebook: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.id, c.cell_type, tuple(c.metadata.get("tags", []))) for c in notebook.cells]


@pytest.mark.parametrize("version", ["student", "solution"])
def test_notebooks_validate_and_both_languages_have_the_same_cells_and_tags(version):
    ja, en = (build_notebook(lang, version) for lang in LANGUAGES)
    for notebook in (ja, en):
        nbformat.validate(notebook)
    assert _shape(ja) == _shape(en)
    tags = {t for _, _, ts in _shape(ja) for t in ts}
    assert {"task1", "task2", "task3", "task1-shapes", "task1-diagram", "task2-choice", "task2-explanation",
            "task3-answer", "selfcheck"} <= tags
    # Each notebook speaks its own language: no bilingual markers or Japanese text left in the English one.
    english = "\n".join(c.source for c in en.cells)
    assert "# ja:" not in english and "# en:" not in english and "BEGIN SOLUTION" not in english
    assert not any("\u3040" <= ch <= "\u30ff" for ch in english)
    assert "ViTクラスの定義" in "\n".join(c.source for c in ja.cells)


@pytest.mark.slow
def test_written_files(built):
    names = sorted(str(p.relative_to(built)) for p in built.rglob("*") if p.is_file() and "vitgrade_student" not in
                   p.parts)
    assert names == ["instructor/rubric.toml", "instructor/vit_cifar10_en_solution.ipynb",
                     "instructor/vit_cifar10_ja_solution.ipynb", "student/vit_cifar10_en.ipynb",
                     "student/vit_cifar10_ja.ipynb", f"student/{wheel_name()}"]
    from nbconvert import HTMLExporter

    for path in built.rglob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        html, _ = HTMLExporter().from_notebook_node(notebook)  # renders as Jupyter would show it
        assert "SelfAttention" in html
    selfcheck = next(c for c in nbformat.read(built / "student/vit_cifar10_en.ipynb", 4).cells
                     if "selfcheck" in c.metadata.get("tags", []))
    assert 'check_notebook("vit_cifar10_en.ipynb")' in selfcheck.source


def test_handout_defects_are_fixed():
    code = "\n".join(c.source for c in build_notebook("en", "solution").cells if c.cell_type == "code")
    loop = code[code.index("for epoch in range"):code.index("print(\"finished training\")")]
    assert loop.index("net.train()") < loop.index("net.eval()")  # back to training mode every epoch
    assert "# SGD optimiser" in code and "Adam オプティマイザ" not in code
    assert "def unnormalize" in code and "unnormalize(images[i : i + 1])" in code
    assert all(f"def {name}" in code for name in ("handout_heatmap", "cls_attention", "attention_rollout"))
    text = "\n".join(c.source for c in build_notebook("en", "solution").cells if c.cell_type == "markdown")
    assert "did not use the class vector" in text and "CLS attention" in text and "rollout" in text
    # The second configuration of 課題1 in the text is the rubric's.
    second = load_rubric().tasks["task1_second"]
    assert ", ".join(f"{k}={v}" for k, v in second.items()) in text


@pytest.mark.slow
def test_filled_notebook_gets_every_automatic_point(built, instructor_report):
    for lang in LANGUAGES:
        report = instructor_report(built / f"instructor/vit_cifar10_{lang}_solution.ipynb")
        failing = {c.id: c.message for c in report.checks if c.status not in ("passed", "skipped", "manual")}
        assert failing == {}
        assert {c.id for c in report.checks if c.status == "manual"} == set(MANUAL_TASKS)
        assert all(report.check(t).status == "passed" for t in AUTOMATIC_TASKS)


@pytest.mark.slow
def test_unfilled_notebook_says_not_implemented_yet_per_check(built):
    report = grade_submission(built / "student/vit_cifar10_ja.ipynb", accuracy="off")
    assert report.status == "graded"
    by_id = {c.id: c for c in report.checks}
    for check_id in ("shapes.self_attention", "shapes.vit", "props.attention_softmax", "equiv.self_attention",
                     "equiv.vit"):
        assert by_id[check_id].status == "failed" and "not implemented yet" in by_id[check_id].message, check_id
    assert by_id["equiv.fnn"].status == "passed"  # FNN is given in the handout
    for check_id in AUTOMATIC_TASKS + MANUAL_TASKS:
        assert by_id[check_id].status == "failed" and "not answered yet" in by_id[check_id].message, check_id


@pytest.mark.slow
def test_task1_names_wrong_stages_without_giving_the_answer(tmp_path, built):
    notebook = nbformat.read(built / "instructor/vit_cifar10_en_solution.ipynb", 4)
    cell = next(c for c in notebook.cells if "task1-shapes" in c.metadata.get("tags", []))
    cell.source = cell.source.replace('"patches": ("B", 36, 192)', '"patches": ("B", 64, 48)')  # copied the table
    path = tmp_path / "copied.ipynb"
    nbformat.write(notebook, path)
    check = grade_submission(path, accuracy="off").check("task1.shapes")
    assert check.status == "failed" and check.message == "15 of 16 shapes right; wrong: second.patches"


def _run_bundle(bundle: Path, submission: Path, tmp_path: Path) -> dict:
    """`vitgrade check` from the bundle in a fresh interpreter where the solution cannot be imported."""
    script = ("import sys; sys.modules['reference.vit'] = None; sys.modules['grader.expected.reference'] = None; "
              f"sys.path.insert(0, {str(bundle)!r}); import grader; "
              f"assert grader.__file__.startswith({str(bundle)!r}), grader.__file__; "
              "from grader.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / f"{submission.stem}.json"
    subprocess.run([sys.executable, "-c", script, "check", str(submission), "--accuracy", "off", "--json", str(out)],
                   cwd=tmp_path, capture_output=True, timeout=300)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bundle_has_no_solution_code(built):
    bundle = built / "student/vitgrade_student"
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert "reference/vit.py" not in files and "grader/expected/reference.py" not in files
    assert not any(f.startswith("assignments/vit_cifar10/examples") for f in files)
    solution = build_notebook("en", "solution")
    solution_lines = {line.strip() for c in solution.cells for line in c.source.splitlines()
                      if "attn.softmax" in line or "permute(0, 2, 4, 1, 3, 5)" in line}
    assert solution_lines
    for name in files:
        if name.endswith((".py", ".toml", ".md", ".j2")):
            text = (bundle / name).read_text(encoding="utf-8")
            assert not any(line in text for line in solution_lines), name
            assert "task2_key" not in text or name.endswith(".py"), name  # the answer key stays home
    assert "grader/test_vectors.npz" in files


@pytest.mark.slow
def test_the_bundle_is_one_wheel_that_pip_installs_and_the_notebook_installs(built, tmp_path):
    """Colab uploads files, not folders: the self-check is one wheel, installed without a build step."""
    import zipfile

    wheel = built / "student" / wheel_name()
    folder = built / "student/vitgrade_student"
    packaged = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                and p.relative_to(folder).parts[0] in ("grader", "assignments", "reference")}
    assert {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n} == packaged
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    probe = ("import grader, grader.cli; from grader.rubric import load_rubric, instructor_only; "
             "from grader.expected import PACKAGED_VECTORS; r = load_rubric(); "
             "assert PACKAGED_VECTORS.exists() and 'task2.choice' not in r.points, r.points; "
             "print(grader.__file__, instructor_only(r))")
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(str(target)), result.stderr
    assert "{'task2.choice': 2.0}" in result.stdout
    cell = next(c for c in build_notebook("ja", "student").cells if "selfcheck" in c.metadata.get("tags", []))
    assert "%pip install -q vitgrade_student-*.whl" in cell.source


@pytest.mark.slow
@pytest.mark.timeout(900)  # ten gradings and two `vitgrade check` processes: minutes on a busy 2-core machine
def test_bundle_checks_agree_with_the_instructors(built, tmp_path, instructor_report):
    bundle = built / "student/vitgrade_student"
    vectors = VectorExpected(bundle / "grader/test_vectors.npz")
    student_rubric = load_rubric(bundle / "assignments/vit_cifar10/rubric.toml")
    assert "task2.choice" not in student_rubric.points and "task2_key" not in student_rubric.tasks
    submissions = [EXAMPLES / "s1002_separate_qkv.py", EXAMPLES / "s2001_softmax_axis.ipynb",
                   EXAMPLES / "s2003_heads_no_transpose.py", built / "student/vit_cifar10_en.ipynb"]
    for submission in submissions:
        instructor = instructor_report(submission)
        in_process = grade_submission(submission, accuracy="off", expected=vectors)
        assert [(c.id, c.status, c.message) for c in in_process.checks] == \
            [(c.id, c.status, c.message) for c in instructor.checks], submission.name
    for submission in (submissions[1], built / "instructor/vit_cifar10_ja_solution.ipynb"):
        instructor = {c.id: (c.status, c.message) for c in instructor_report(submission).checks}
        bundled = {c["id"]: (c["status"], c["message"]) for c in _run_bundle(bundle, submission, tmp_path)["checks"]}
        assert {k: v for k, v in instructor.items() if k in bundled} == bundled
        assert set(instructor) - set(bundled) == {"task2.choice"}


@pytest.mark.slow
def test_ta_sheet_goes_round_trip_through_manual(built, tmp_path):
    import pandas as pd

    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "s0001.ipynb").write_bytes((built / "instructor/vit_cifar10_ja_solution.ipynb").read_bytes())
    out = tmp_path / "out"
    assert main(["grade", str(submissions), "--out", str(out), "--accuracy", "off", "--quiet"]) == 0
    sheet = pd.read_csv(out / "ta_sheet.csv", dtype=str, keep_default_na=False)
    assert list(sheet.columns) == ["student_id", "check_id", "points", "comment", "max_points", "state", "answer",
                                   "pictures"]
    assert sorted(sheet.check_id) == sorted(MANUAL_TASKS) and set(sheet.student_id) == {"s0001"}
    assert "クラストークン" in sheet.set_index("check_id").loc["task1.diagram", "answer"]
    html = (out / "ta_sheet.html").read_text(encoding="utf-8")
    assert "task1.diagram" in html and "クラストークン" in html
    assert "3 written answers await a TA" in (out / "summary.html").read_text(encoding="utf-8")
    sheet.loc[sheet.check_id == "task1.diagram", ["points", "comment"]] = ["3.5", "arrows missing"]
    sheet.to_csv(tmp_path / "graded.csv", index=False)
    assert main(["grade", str(submissions), "--out", str(out), "--accuracy", "off", "--quiet",
                 "--manual", str(tmp_path / "graded.csv")]) == 0
    report = json.loads((out / "students/s0001/report.json").read_text())
    diagram = next(c for c in report["checks"] if c["id"] == "task1.diagram")
    assert diagram["points"] == 3.5 and "arrows missing" in diagram["message"]
    again = pd.read_csv(out / "ta_sheet.csv", dtype=str, keep_default_na=False).set_index("check_id")
    assert sorted(again.index) == sorted(MANUAL_TASKS)  # graded rows stay, with their points: the TA's record
    assert list(again.loc["task1.diagram", ["points", "comment", "state"]]) == ["3.5", "arrows missing", "graded"]
    assert "2 written answers await a TA" in (out / "summary.html").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("fast_harness", [False, True], ids=["handout-loop", "fast-harness"])
def test_solution_notebook_runs_end_to_end_on_stand_in_data(monkeypatch, fast_harness):
    """Every code cell of the solution notebook runs in order (no GPU, no download: the data cell is
    replaced by small random loaders and arrays, and the self-check cell is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.setattr(plt, "show", lambda: plt.close("all"))
    stand_in = ("import torch\n"
                "batch = lambda n: (torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))\n"
                "trainloader = [batch(4), batch(4)]\nvalidationloader = [batch(4)]\ntestloader = [batch(8)]\n"
                "classes = ('plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')\n"
                "from types import SimpleNamespace\nimport numpy\n"
                "pixels = numpy.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=numpy.uint8)\n"
                "trainset = SimpleNamespace(data=pixels, targets=[i % 10 for i in range(64)])\n"
                "testset = SimpleNamespace(data=pixels[:16])\n")
    namespace: dict = {}
    torch.manual_seed(0)
    for cell in build_notebook("en", "solution").cells:
        if cell.cell_type != "code" or "selfcheck" in cell.metadata.get("tags", []):
            continue
        source = stand_in if "torchvision.datasets.CIFAR10" in cell.source else cell.source
        source = source.replace("max_epoch = 15", "max_epoch = 2")
        source = source.replace("USE_FAST_HARNESS = False", f"USE_FAST_HARNESS = {fast_harness}")
        exec(compile(source, f"cell {cell.id}", "exec"), namespace)  # noqa: S102 - our own handout
    if fast_harness:
        assert namespace["outcome"].header["epochs_run"] == 2 and namespace["train_losses"] == []
    else:
        assert len(namespace["train_losses"]) == 2
    assert namespace["net"].training is False
    assert 0 <= namespace["correct"] <= namespace["total"] == 8
    assert set(namespace["maps"]) == {"handout map", "CLS attention (last layer)", "attention rollout"}
    assert all(m.shape == (5, 8, 8) and float(m.max()) <= 1.0 for m in namespace["maps"].values())


@pytest.mark.parametrize("source, message", [
    ("task1_shapes = __import__('os').system('touch /tmp/pwned')", "literals only"),
    ("task1_shapes = " + "(" * 1000 + ")" * 1000, "not valid Python"),
    ("task1_shapes = [" + "[" * 150 + "]" * 150 + "]", "must be a dict"),
    ("task1_shapes = {'default': 1}  # " + "x" * 20_000, "characters long"),
    ("shapes = {}", "does not assign task1_shapes"),
    ("task1_shapes = {", r"not valid Python \(line 1"),
], ids=["call", "deep-parentheses", "nested-lists", "huge", "other-name", "syntax-error"])
def test_hostile_structured_answers_fail_cleanly_and_never_run(source, message, tmp_path):
    from types import SimpleNamespace

    from grader.checks.context import CheckFailed
    from grader.checks.tasks import check_task1_shapes

    ctx = SimpleNamespace(submission=SimpleNamespace(answers={"task1-shapes": source}), rubric=load_rubric())
    with pytest.raises(CheckFailed, match=message):
        check_task1_shapes(ctx)
    assert not Path("/tmp/pwned").exists()


def test_the_examples_made_from_the_handout_are_current():
    """s1004 is the Japanese solution build; s1005 the English one with its diagram as a file beside it."""
    import zipfile

    rebuild = "the handout source changed: rebuild the examples with python scripts/build_examples.py"
    example = nbformat.read(EXAMPLES / "s1004_handout_ja_filled.ipynb", as_version=4)
    assert [c.source for c in example.cells] == [c.source for c in build_notebook("ja", "solution").cells], rebuild
    with zipfile.ZipFile(EXAMPLES / "s1005_diagram_file.zip") as archive:
        assert sorted(archive.namelist()) == ["s1005/diagram.png", "s1005/vit_cifar10_en.ipynb"]
        zipped = nbformat.reads(archive.read("s1005/vit_cifar10_en.ipynb").decode(), as_version=4)
    built = build_notebook("en", "solution")
    diagram = next(i for i, c in enumerate(built.cells) if "task1-diagram" in c.metadata.get("tags", []))
    built.cells[diagram].source = zipped.cells[diagram].source
    assert "![diagram](diagram.png)" in zipped.cells[diagram].source
    assert [c.source for c in zipped.cells] == [c.source for c in built.cells], rebuild


@pytest.mark.slow
def test_diagram_file_example_shows_its_picture():
    report = grade_submission(EXAMPLES / "s1005_diagram_file.zip", accuracy="off")
    diagram = report.check("task1.diagram")
    assert diagram.status == "manual" and diagram.details["pictures"] == ["answer-task1-diagram-1.png"]
    assert report.attachments["answer-task1-diagram-1.png"].startswith(b"\x89PNG")
    assert report.automatic_checks_passed and not any("picture" in w for w in report.warnings)


@pytest.mark.slow
def test_self_check_cell_shows_a_table(built, monkeypatch, capsys):
    import types

    from grader.selfcheck import check_notebook

    shown = []
    fake = types.ModuleType("IPython.display")
    fake.display = shown.append
    fake.Markdown = lambda text: f"markdown: {text}"
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    report = check_notebook(built / "student/vit_cifar10_en.ipynb")
    assert shown[0].startswith("markdown: **vit_cifar10_en**") and f"{report.score:g}/{report.max_score:g}" in shown[0]
    table = shown[1].data  # a pandas Styler over one row per check
    assert list(table["check"]) == [c.id for c in report.checks]
    assert "not implemented yet" in table.set_index("check").loc["equiv.self_attention", "message"]
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # a plain Python session: the text table
    check_notebook(built / "student/vit_cifar10_en.ipynb")
    assert "equiv.self_attention" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="save the notebook"):
        check_notebook(built / "student/missing.ipynb")
    # In Colab there is no file: the cell asks the front end for the open notebook.
    colab = types.ModuleType("google.colab")
    colab._message = types.SimpleNamespace(blocking_request=lambda request, timeout_sec: {
        "ipynb": json.loads((built / "instructor/vit_cifar10_en_solution.ipynb").read_text())} if request == "get_ipynb"
        else None)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    report = check_notebook("vit_cifar10_en.ipynb")
    assert report.student == "vit_cifar10_en" and report.check("equiv.vit").status == "passed"
