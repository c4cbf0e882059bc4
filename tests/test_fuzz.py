"""Property-based fuzzing (bounded time) of intake and of the parent's side of the worker protocol.

Whatever the bytes, intake either reads a submission or raises IntakeError, and the protocol
reader either returns a well-formed message or raises ProtocolError / EOFError / TimeoutError.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.intake import IntakeError, load_submission
from grader.sandbox import wire

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)


def read_bytes(data: bytes, max_bytes: int = 1 << 20):
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        write_fd = -1
        return wire.read_message(read_fd, deadline=time.monotonic() + 2, max_bytes=max_bytes)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


@FUZZ
@given(st.binary(max_size=2000))
def test_protocol_garbage_is_rejected_cleanly(data):
    try:
        header, arrays = read_bytes(data)
    except (wire.ProtocolError, EOFError, TimeoutError):
        return
    assert isinstance(header, dict) and all(isinstance(a, np.ndarray) for a in arrays.values())


@FUZZ
@given(json_values, st.lists(st.tuples(st.text(max_size=5), st.integers(-10, 10**12)), max_size=3),
       st.binary(max_size=300))
def test_protocol_lies_about_lengths_and_listings(header, listing, tail):
    body = json.dumps({"payload": header, "arrays": listing}).encode()
    data = wire.MAGIC + struct.pack("<I", len(body)) + body + tail
    try:
        _, arrays = read_bytes(data)
    except (wire.ProtocolError, EOFError, TimeoutError):
        return
    assert len(arrays) == len(listing)


@FUZZ
@given(st.sampled_from(["|O", "<U3", "V8", "<f8", "<i4"]), st.integers(0, 5))
def test_protocol_refuses_object_and_string_arrays(dtype, length):
    import io

    buffer = io.BytesIO()
    array = np.zeros(length, dtype=np.dtype(dtype)) if dtype != "|O" else np.array([None] * length, dtype=object)
    np.save(buffer, array, allow_pickle=True)
    blob = buffer.getvalue()
    body = json.dumps({"arrays": [["a", len(blob)]]}).encode()
    try:
        _, arrays = read_bytes(wire.MAGIC + struct.pack("<I", len(body)) + body + blob)
    except wire.ProtocolError:
        assert dtype in ("|O", "<U3", "V8")
        return
    assert arrays["a"].dtype.kind in wire.ALLOWED_KINDS


@FUZZ
@given(json_values)
def test_notebook_json_of_any_shape(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("nb") / "fuzz.ipynb"
    path.write_text(json.dumps(value), encoding="utf-8")
    try:
        submission = load_submission(path)
    except IntakeError:
        return
    assert submission.code


cell = st.fixed_dictionaries({"cell_type": st.sampled_from(["code", "markdown", "raw", "weird"]),
                              "source": st.one_of(st.text(max_size=80), st.lists(st.text(max_size=20), max_size=3)),
                              "metadata": st.one_of(st.just({}), st.fixed_dictionaries(
                                  {"tags": st.lists(st.sampled_from(["task1", "task2", "x"]), max_size=2)}))})


@FUZZ
@given(st.lists(cell, max_size=6), st.integers(1, 5))
def test_notebooks_with_odd_cells(tmp_path_factory, cells, version):
    path = tmp_path_factory.mktemp("nb") / "cells.ipynb"
    notebook = {"nbformat": version, "nbformat_minor": 0, "metadata": {}, "cells": cells}
    path.write_text(json.dumps(notebook), encoding="utf-8")
    try:
        submission = load_submission(path)
    except IntakeError:
        return
    compile(submission.code, "fuzz", "exec")  # what intake keeps always parses


member_names = st.lists(st.sampled_from(["a", "b.py", "x.ipynb", ".", "..", "/", "\\", "é", "ノ", " "]),
                        min_size=1, max_size=8).map("".join)


@FUZZ
@given(st.lists(st.tuples(member_names, st.binary(max_size=50)), min_size=1, max_size=5))
@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # duplicate members are one of the cases
def test_zip_members_never_escape(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("zip")
    archive = root / "sub" / "s.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    before = {p for p in root.rglob("*")}
    with contextlib.suppress(IntakeError):
        load_submission(archive)
    assert {p for p in root.rglob("*")} == before  # nothing written beside the archive, or anywhere under root


@FUZZ
@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"),
                                  min_size=1, max_size=12),
                          st.sampled_from([".ipynb", ".py", ".txt", ""])), max_size=4))
def test_folders_with_odd_file_names(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("folder")
    for stem, suffix in names:
        if stem in (".", ".."):
            continue
        try:
            (folder / f"{stem}{suffix}").write_text("import torch\nclass FNN(torch.nn.Module):\n    pass\n")
        except OSError:
            continue
    try:
        submission = load_submission(folder)
    except IntakeError:
        return
    assert "class FNN" in submission.code and Path(submission.path) == folder
