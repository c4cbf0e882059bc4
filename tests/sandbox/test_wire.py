"""The worker protocol's framing (grader/sandbox/wire.py): what goes in comes out, as np.save's bytes."""

from __future__ import annotations

import io
import os
import sys
import threading

import numpy as np
import pytest

from grader.sandbox import wire

ARRAYS = {
    "c_order": np.arange(12.0).reshape(3, 4),
    "fortran_order": np.asfortranarray(np.arange(10.0).reshape(5, 2)),
    "strided": np.arange(36.0).reshape(6, 6)[::2, 1:],
    "bool": np.array([True, False, True]),
    "big_endian": np.arange(7, dtype=">i4"),
    "empty": np.zeros((0, 3)),
    "float32": np.linspace(0, 1, 5, dtype=np.float32),
    "larger_than_a_pipe": np.random.default_rng(0).standard_normal(3 * wire.CHUNK // 8 + 5),
}


def _through_a_pipe(header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=wire.write_message, args=(write_fd, header, arrays))
    try:
        writer.start()
        return wire.read_message(read_fd)
    finally:
        writer.join()
        os.close(read_fd)
        os.close(write_fd)


def test_arrays_of_every_layout_cross_unchanged():
    header, arrays = _through_a_pipe({"op": "forward", "handle": "ViT-0"}, ARRAYS)
    assert header == {"op": "forward", "handle": "ViT-0"}
    assert list(arrays) == list(ARRAYS)
    for name, sent in ARRAYS.items():
        assert arrays[name].dtype == sent.dtype and arrays[name].shape == sent.shape, name
        np.testing.assert_array_equal(arrays[name], sent, err_msg=name)


def test_an_array_goes_out_as_the_bytes_np_save_writes():
    for name, array in ARRAYS.items():
        parts = wire.encode({}, {name: array})
        saved = io.BytesIO()
        np.save(saved, np.ascontiguousarray(array), allow_pickle=False)
        assert b"".join(bytes(part) for part in parts[1:]) == saved.getvalue(), name


def test_an_array_goes_out_without_a_copy():
    array = np.arange(1000.0)
    data = wire.encode({}, {"a": array})[2]
    assert np.shares_memory(np.frombuffer(data, dtype=np.uint8), array)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_widen_makes_a_pipe_hold_a_chunk():
    import fcntl

    read_fd, write_fd = os.pipe()
    try:
        wire.widen(write_fd)
        with open("/proc/sys/fs/pipe-max-size") as limit:
            assert fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ) >= min(wire.CHUNK, int(limit.read()))
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_non_blocking_pipe_that_is_empty_for_a_moment_is_waited_on_not_taken_for_its_end():
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    writer = threading.Timer(0.1, wire.write_message, args=(write_fd, {"op": "late"}, {"a": np.arange(3.0)}))
    try:
        writer.start()
        header, arrays = wire.read_message(read_fd, deadline=None)  # no select(): read at once, and again
        assert header == {"op": "late"} and arrays["a"].tolist() == [0.0, 1.0, 2.0]
    finally:
        writer.join()
        os.close(read_fd)
        os.close(write_fd)
