"""Shared fixtures: the handout's verbatim classes, example paths, and quick graders."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from assignments import assignment_dir

# The tests never read or write the user's own cache (reference accuracies, data): the run gets a scratch one,
# which the vitgrade processes the tests start inherit. Tests that need a cache of their own still set theirs.
# pytest-xdist's workers inherit the controller's (they start after this line ran there), so a reference
# accuracy one of them trained is found by the others (the grader writes the cache atomically).
if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller, or a run without xdist
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="vitgrade-test-cache-")


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the controller (or the only process): every worker has finished
        shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


# One torch thread in the test process and in the `python -m grader` processes the tests start (the sandbox's
# worker gets its threads from the grader: tests that train pass threads=1). The tests share two cores with the
# workers they start (and, on a shared machine, with others); torch's default of a thread per core then
# spin-waits for a busy core: one reference training took 43 s with two threads and 4.6 s with one (load 7.7).
os.environ["OMP_NUM_THREADS"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = assignment_dir() / "examples"
HANDOUT_SOURCE = (FIXTURES / "handout_vit.py").read_text(encoding="utf-8")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """torch may have been imported before this file set OMP_NUM_THREADS."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def handout():
    """The handout's classes, imported from the verbatim fixture."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import handout_vit
    finally:
        sys.path.remove(str(FIXTURES))
    return handout_vit


@pytest.fixture(scope="session")
def rubric():
    from grader.rubric import load_rubric

    return load_rubric()


def code_rubric():
    """The bundled rubric without the written tasks, for code-only submissions (.py files, folders)."""
    from grader.rubric import load_rubric

    rubric = load_rubric()
    rubric.points = {k: v for k, v in rubric.points.items() if not k.startswith("task")}
    return rubric


@pytest.fixture(scope="session")
def code_rubric_file(tmp_path_factory) -> Path:
    import tomlkit

    from grader.rubric import DEFAULT_RUBRIC

    data = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    for check_id in [k for k in data["points"] if k.startswith("task")]:
        del data["points"][check_id]
    path = tmp_path_factory.mktemp("rubric") / "code_only.toml"
    path.write_text(tomlkit.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def best_isolation() -> str:
    from grader.sandbox import available_levels

    return available_levels()[0]
