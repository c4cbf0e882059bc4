"""Every mutant fails the check that names its bug; every correct variant gets full marks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from grader.batch.grading import grade_submission

from ..conftest import code_rubric
from .corpus import HANDOUT_POLICY, MUTANTS, variants
from .corpus_styles import COURSE_REVISION, DIFFERENCES, POLICY_EXEMPT, STYLES

VARIANTS = variants()


# The property checks that cost most (more than half of a grading). Code with one known bug is graded without
# them, unless its bug is theirs: its tests read only the check that names the bug. Correct code goes through
# every check. Measured on this corpus: the named check's status and message are the same either way for
# every mutant and one-difference style except the one with dropout in eval mode, whose outputs are random.
COSTLY_PROPERTIES = {"props.batch_independence", "props.gradients", "props.determinism"}


def _rubric_for(bug_check: str | None):
    rubric = code_rubric()
    if bug_check is not None:
        rubric.points = {k: v for k, v in rubric.points.items() if k not in COSTLY_PROPERTIES - {bug_check}}
    return rubric


def _grade_all(tmp: Path, sources: dict[str, tuple[str | Path, str | None]]) -> dict:
    """Grade each source (text or a path) with the rubric for the check its bug must fail (None: correct code)."""
    paths = {}
    for name, (source, _) in sources.items():
        if isinstance(source, Path):
            paths[name] = source
        else:
            paths[name] = tmp / f"{name.replace(':', '_')}.py"
            paths[name].write_text(source, encoding="utf-8")
    with ThreadPoolExecutor(max_workers=2) as pool:  # two workers of one thread each on two cores
        futures = {name: pool.submit(grade_submission, path, student_id=name, accuracy="off", threads=1,
                                     rubric=_rubric_for(sources[name][1]))
                   for name, path in paths.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    torch.set_num_threads(1)  # the parent's reference computations share the cores too
    sources = {f"mutant:{mutant.name}": (mutant.source(), mutant.check) for mutant in MUTANTS}
    sources.update({f"variant:{name}": (source, None) for name, source in VARIANTS.items()})
    sources.update({f"style:{name}": (source, None) for name, source in STYLES.items()})
    sources.update({f"difference:{item.name}": (item.source(), item.check) for item in DIFFERENCES})
    sources["revision:dim_embed"] = (COURSE_REVISION, None)
    return _grade_all(tmp_path_factory.mktemp("corpus"), sources)


def test_corpus_size():
    assert len(MUTANTS) >= 25 and len(VARIANTS) >= 6
    assert len(STYLES) >= 12 and len(DIFFERENCES) >= 12


pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the fixture grades about 65 submissions


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_mutant_fails_with_a_message_that_points_at_the_bug(graded, mutant):
    report = graded[f"mutant:{mutant.name}"]
    assert report.status == "graded", report.error
    check = report.check(mutant.check)
    assert check is not None
    assert check.status == "failed", f"{mutant.check} {check.status}: {check.message}"
    assert mutant.words.lower() in check.message.lower(), check.message
    assert report.score < report.max_score


@pytest.mark.parametrize("name", VARIANTS)
def test_correct_variant_gets_full_marks(graded, name):
    report = graded[f"variant:{name}"]
    assert report.status == "graded", report.error
    failing = {c.id: c.message for c in report.checks if c.status not in ("passed", "skipped")}
    if name in HANDOUT_POLICY:
        assert list(failing) == ["static.forbidden"] and HANDOUT_POLICY[name] in failing["static.forbidden"]
        assert report.score == report.max_score - report.check("static.forbidden").max_points
        return
    assert failing == {}
    assert report.score == report.max_score > 0
    assert report.check("train.accuracy").status == "skipped"


@pytest.mark.parametrize("name", STYLES)
def test_correct_style_gets_every_code_check(graded, name):
    """Code written in others' styles: the function, not the spelling, earns the points."""
    report = graded[f"style:{name}"]
    assert report.status == "graded", report.error
    failing = {c.id: c.message for c in report.checks if c.status not in ("passed", "skipped")}
    assert set(failing) <= POLICY_EXEMPT.get(name, set()), failing
    assert report.check("train.accuracy").status == "skipped"


@pytest.mark.parametrize("item", DIFFERENCES, ids=lambda item: item.name)
def test_style_with_one_difference_fails_naming_it(graded, item):
    report = graded[f"difference:{item.name}"]
    assert report.status == "graded", report.error
    check = report.check(item.check)
    assert check.status == "failed", f"{item.check} {check.status}: {check.message}"
    assert item.words.lower() in check.message.lower(), check.message
    assert report.score < report.max_score


def test_course_revision_costs_only_the_interface_check(graded):
    report = graded["revision:dim_embed"]
    failing = {c.id: c.message for c in report.checks if c.status not in ("passed", "skipped")}
    assert set(failing) == {"load.interface"}, failing
    assert "ViT.__init__ has no keyword dim_hidden; it has dim_embed" in failing["load.interface"]
    assert "(heads, B, N, N)" in failing["load.interface"]
