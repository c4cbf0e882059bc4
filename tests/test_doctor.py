"""`vitgrade doctor` names the install layout from the marks each installer leaves in its prefix."""

from __future__ import annotations

import sys

import pytest

from grader.doctor import install_layout


@pytest.mark.parametrize(("marks", "venv", "expected"), [
    ({"pyvenv.cfg": "home = /usr/bin\n"}, True, "venv ("),
    ({"pyvenv.cfg": "home = /usr/bin\nvirtualenv = 20.26.0\n"}, True, "virtualenv ("),
    ({"pyvenv.cfg": "home = /usr/bin\n", "pipx_metadata.json": "{}"}, True, "pipx venv ("),
    ({"conda-meta/history": ""}, False, "conda environment (no venv)"),
    ({}, False, "base interpreter in its own prefix"),
], ids=["venv", "virtualenv", "pipx", "conda", "pyenv"])
def test_install_layout_names_what_made_the_prefix(tmp_path, monkeypatch, marks, venv, expected):
    for name, text in marks.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sys, "base_prefix", "/usr" if venv else str(tmp_path))
    assert install_layout().startswith(expected)


def test_the_systems_python_is_named_so(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert install_layout() == "the system's Python (no venv)"
