"""The packages vitgrade builds (student bundle, Gradescope's copy): their pyproject.toml and wheel metadata."""

from __future__ import annotations

import sys
from email.message import Message

import pytest

from assignments import PROJECT_ROOT
from grader import __version__, bundle, pyproject
from grader.lms import gradescope_autograder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The project's own pyproject.toml, read here without grader.pyproject: the one source the pins must come from.
PROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def _own_pin(name: str) -> str:
    return next(r for r in PROJECT["dependencies"] if pyproject.requirement_name(r) == name)


def test_the_bundles_pyproject_pins_its_requirements_as_the_project_does():
    generated = tomllib.loads(bundle.distribution().pyproject())
    assert generated["project"]["dependencies"] == [_own_pin(name) for name in bundle.DEPENDENCIES]
    assert "torchvision" not in {pyproject.requirement_name(d) for d in generated["project"]["dependencies"]}
    assert generated["project"] | {"dependencies": None} == {
        "name": "vitgrade-student", "version": __version__, "description": bundle.DESCRIPTION,
        "requires-python": PROJECT["requires-python"], "dependencies": None, "scripts": {"vitgrade": "grader.cli:main"}}
    assert generated["build-system"] == {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"}
    assert generated["tool"]["setuptools"] == {
        "packages": {"find": {"include": ["grader*", "assignments*", "reference*"]}},
        "package-data": {"grader": ["test_vectors.npz", "**/*.j2"], "assignments": ["**/rubric.toml"]}}


def test_the_bundles_wheel_metadata_says_what_its_pyproject_says():
    distribution = bundle.distribution()
    generated = tomllib.loads(distribution.pyproject())["project"]
    lines = distribution.dist_info()["METADATA"].decode().splitlines()
    assert [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")] == \
        generated["dependencies"]
    assert {"Name: vitgrade-student", f"Version: {__version__}", f"Summary: {bundle.DESCRIPTION}",
            f"Requires-Python: {PROJECT['requires-python']}"} <= set(lines)
    assert distribution.dist_info()["entry_points.txt"] == b"[console_scripts]\nvitgrade = grader.cli:main\n"
    assert distribution.dist_info()["top_level.txt"] == b"grader\nassignments\nreference\n"


def test_the_gradescope_copy_lists_the_projects_requirements():
    generated = tomllib.loads(gradescope_autograder.distribution().pyproject())
    assert generated["project"] == {"name": "vit-autograder", "version": __version__,
                                    "requires-python": PROJECT["requires-python"],
                                    "dependencies": PROJECT["dependencies"],
                                    "scripts": {"vitgrade": "grader.cli:main"}}
    assert generated["build-system"] == {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"}
    assert generated["tool"]["setuptools"] == {
        "packages": {"find": {"include": ["grader*", "reference*", "assignments*"]}},
        "package-data": {"assignments": ["**/*"], "grader": ["**/*.html", "**/*.j2", "**/*.css", "*.npz"]}}


def test_a_name_the_project_does_not_require_is_refused_and_names_are_compared_normalised():
    assert pyproject.pinned(["Jinja2", "PILLOW"]) == [_own_pin("jinja2"), _own_pin("pillow")]
    assert pyproject.requirement_name("tomli>=2.0; python_version < '3.11'") == "tomli"
    assert pyproject.requirement_name("Zope.Interface_x>=1") == "zope-interface-x"
    with pytest.raises(LookupError, match="scikit-learn"):
        pyproject.pinned(["torch", "scikit-learn"])  # a test extra, not a requirement


def test_an_installed_copy_reads_its_requirements_from_its_metadata(monkeypatch, tmp_path):
    """Without a checkout's pyproject.toml (an installed package), the pins come from the installed metadata,
    its extras left out."""
    installed = Message()
    installed["Requires-Python"] = ">=3.10"
    for requirement in ("torch>=2.1", 'tomli>=2.0; python_version < "3.11"', 'pytest>=8; extra == "test"'):
        installed["Requires-Dist"] = requirement
    monkeypatch.setattr(pyproject, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: installed if name == "vit-autograder" else None)
    pyproject._project.cache_clear()
    try:
        assert pyproject.project_requirements() == ["torch>=2.1", 'tomli>=2.0; python_version < "3.11"']
        assert pyproject.requires_python() == ">=3.10"
        assert pyproject.pinned(["tomli"]) == ['tomli>=2.0; python_version < "3.11"']
    finally:
        pyproject._project.cache_clear()  # the next test reads the checkout again
