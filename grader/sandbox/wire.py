"""The worker protocol's framing: a JSON header plus raw `.npy` arrays, never pickle.

One message = MAGIC, header length (uint32), UTF-8 JSON header, then the arrays the header lists
(name and byte length each), each in numpy's `.npy` format (np.save's bytes). Arrays go out from their
own memory and come in as views of the buffer they were read into, with only numeric dtypes accepted,
so an array crosses the pipe without being copied on either side (the checks send the reference's
weights into the student's ViT many times per submission).
This file is also copied into the sandbox, so it imports only the standard library and numpy.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.lib import format as npy

MAGIC = b"VGW1"
MAX_HEADER_BYTES = 4 * 1024**2
ALLOWED_KINDS = set("biuf")  # bool, signed, unsigned, float: no objects, strings or structs


class ProtocolError(Exception):
    """A message that is malformed, too large, or does not arrive in time."""


# A deadline is a time.monotonic() value, or a function returning the current one (the parent's
# deadlines move when the grader itself was the one that was slow).
Deadline = float | Callable[[], float] | None


class Channel(Protocol):
    """The parent's end of the worker's pipes where select() cannot wait on a pipe (Windows; see
    grader/sandbox/transport.py): `read` takes at most `size` bytes of the reply pipe (b"" at its end),
    `write` puts at most `len(data)` bytes into the request pipe; both wait by themselves and raise
    TimeoutError (READ_TIMEOUT / WRITE_TIMEOUT) at the deadline."""

    def read(self, size: int, deadline: Deadline) -> bytes: ...

    def write(self, data: memoryview, deadline: Deadline) -> int: ...


# Where a message goes: a raw file descriptor (waited on with select()), or a Channel.
Pipe = int | Channel
READ_TIMEOUT, WRITE_TIMEOUT = "no reply in time", "the other side stopped reading"


def seconds_left(deadline: Deadline) -> float | None:
    if deadline is None:
        return None
    return (deadline() if callable(deadline) else deadline) - time.monotonic()


def _wait(fd: int, deadline: Deadline, for_write: bool, what: str) -> None:
    """Wait until `fd` is ready; at the deadline, look once more (a reply that arrived while this
    process was busy is not late) and ask the deadline again (it may have moved)."""
    while True:
        wait = seconds_left(deadline)
        if wait is None:
            return
        ready = select.select([], [fd], [], max(wait, 0.0)) if for_write else select.select([fd], [], [], max(wait, 0.0))
        if ready[1] if for_write else ready[0]:
            return
        remaining = seconds_left(deadline)
        if remaining is not None and remaining <= 0:
            raise TimeoutError(what)


CHUNK = 1 << 20  # bytes per read or write: a whole pipe where `widen` could make it this wide


def widen(fd: int) -> None:
    """Make a pipe hold CHUNK bytes where Linux allows it (the default 64 KiB means a switch between the two
    processes for every 64 KiB of weights); elsewhere, or over the system's limits, leave it as it is."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)
    except (ImportError, AttributeError, OSError):  # not Linux; over /proc/sys/fs/pipe-max-size or the user's quota
        pass


def _npy_header(array: np.ndarray) -> bytes:
    """The `.npy` header np.save would write for `array` (C order): the array's own bytes follow it."""
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, npy.header_data_from_array_1_0(array))
    return buffer.getvalue()


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """One message as the buffers to write in turn; the arrays' data is not copied."""
    parts: list[bytes | memoryview] = []
    listing = []
    for name, array in (arrays or {}).items():
        array = np.ascontiguousarray(array)
        prefix = _npy_header(array)
        parts += [prefix, memoryview(array.reshape(-1).view(np.uint8))]
        listing.append([name, len(prefix) + array.nbytes])
    body = json.dumps({**header, "arrays": listing}).encode()
    return [MAGIC + struct.pack("<I", len(body)) + body, *parts]


def _write_some(fd: Pipe, data: memoryview, deadline: Deadline) -> int:
    if not isinstance(fd, int):
        return fd.write(data, deadline)
    _wait(fd, deadline, True, WRITE_TIMEOUT)
    try:
        return os.write(fd, data)
    except BlockingIOError:  # a non-blocking pipe that is full: wait again
        return 0


def write_message(fd: Pipe, header: dict, arrays: dict[str, np.ndarray] | None = None,
                  deadline: Deadline = None) -> None:
    for part in encode(header, arrays):
        data = memoryview(part)
        while data:
            data = data[_write_some(fd, data[:CHUNK], deadline):]


def _read_some(fd: Pipe, into: memoryview, deadline: Deadline) -> int | None:
    """Bytes read into `into`: 0 at the end of the pipe, None when a non-blocking pipe had none after all."""
    if not isinstance(fd, int):
        chunk = fd.read(len(into), deadline)
        into[: len(chunk)] = chunk
        return len(chunk)
    _wait(fd, deadline, False, READ_TIMEOUT)
    with io.FileIO(fd, "rb", closefd=False) as file:  # readinto: no copy (os.readv is not on Windows)
        return file.readinto(into)


def _read_exact(fd: Pipe, size: int, deadline: Deadline) -> np.ndarray:
    """`size` bytes, read straight into a new buffer."""
    buffer = np.empty(size, dtype=np.uint8)
    view = memoryview(buffer)
    while view:
        count = _read_some(fd, view[:CHUNK], deadline)
        if count is None:
            continue
        if count == 0:
            raise EOFError("the other side closed the channel")
        view = view[count:]
    return buffer


def _array(name: str, blob: np.ndarray) -> np.ndarray:
    """The array a `.npy` blob holds, as a view of the blob."""
    start = io.BytesIO(blob[: npy.MAGIC_LEN + 4 + 10_000].tobytes())  # the header's maximum size
    version = npy.read_magic(start)
    if version not in ((1, 0), (2, 0)):  # 3.0 only adds UTF-8 field names, which no allowed dtype has
        raise ValueError(f"unsupported .npy version {version}")
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran_order, dtype = read_header(start)
    if dtype.kind not in ALLOWED_KINDS:
        raise ProtocolError(f"array {name!r} has a disallowed dtype")
    if any(n < 0 for n in shape):
        raise ValueError(f"negative shape {shape}")
    count = math.prod(shape)
    data = blob[start.tell():]
    if data.size != count * dtype.itemsize:
        raise ValueError(f"{data.size} bytes of data for shape {shape} of {dtype}")
    values = data.view(dtype)
    return values.reshape(shape[::-1]).T if fortran_order else values.reshape(shape)


def read_message(fd: Pipe, deadline: Deadline = None, max_bytes: int = 1 << 31) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one message; raise ProtocolError on anything malformed or larger than `max_bytes` of arrays
    (checked from the header, before the arrays are read), TimeoutError, EOFError."""
    prefix = _read_exact(fd, 8, deadline).tobytes()
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"bad message start {prefix[:4]!r}")
    (header_len,) = struct.unpack("<I", prefix[4:])
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(fd, header_len, deadline).tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ProtocolError("message header is not an object with an array listing")
    listing = header.pop("arrays", [])
    try:
        sizes = [(str(name), int(size)) for name, size in listing]
    except (TypeError, ValueError):
        raise ProtocolError("malformed array listing") from None
    total = sum(size for _, size in sizes)
    if any(size < 0 for _, size in sizes) or total > max_bytes:
        raise ProtocolError(f"the reply announces {total:,} bytes of arrays, more than the {max_bytes:,} this "
                            "request can need")
    arrays = {}
    for name, size in sizes:
        blob = _read_exact(fd, size, deadline)
        try:
            arrays[name] = _array(name, blob)
        except ProtocolError:
            raise
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, ... for bad bytes
            raise ProtocolError(f"array {name!r} is not a valid .npy blob ({exc})") from None
    return header, arrays
