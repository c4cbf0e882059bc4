"""The worker protocol's framing: a JSON header plus raw `.npy` arrays, never pickle.

One message = MAGIC, header length (uint32), UTF-8 JSON header, then the arrays the header lists
(name and byte length each), each in numpy's `.npy` format and loaded with `allow_pickle=False`.
This file is also copied into the sandbox, so it imports only the standard library and numpy.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

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


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    blobs = []
    listing = []
    for name, array in (arrays or {}).items():
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        blobs.append(buffer.getvalue())
        listing.append([name, len(blobs[-1])])
    body = json.dumps({**header, "arrays": listing}).encode()
    return MAGIC + struct.pack("<I", len(body)) + body + b"".join(blobs)


def write_message(fd: Pipe, header: dict, arrays: dict[str, np.ndarray] | None = None,
                  deadline: Deadline = None) -> None:
    data = memoryview(encode(header, arrays))
    while data:
        if isinstance(fd, int):
            _wait(fd, deadline, True, WRITE_TIMEOUT)
            try:
                written = os.write(fd, data[: 1 << 16])
            except BlockingIOError:  # a non-blocking pipe that is full: wait again
                continue
        else:
            written = fd.write(data[: 1 << 16], deadline)
        data = data[written:]


def _read_exact(fd: Pipe, size: int, deadline: Deadline) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        if isinstance(fd, int):
            _wait(fd, deadline, False, READ_TIMEOUT)
            chunk = os.read(fd, min(remaining, 1 << 20))
        else:
            chunk = fd.read(min(remaining, 1 << 20), deadline)
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(fd: Pipe, deadline: Deadline = None, max_bytes: int = 1 << 31) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one message; raise ProtocolError on anything malformed or larger than `max_bytes` of arrays
    (checked from the header, before the arrays are read), TimeoutError, EOFError."""
    prefix = _read_exact(fd, 8, deadline)
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"bad message start {prefix[:4]!r}")
    (header_len,) = struct.unpack("<I", prefix[4:])
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(fd, header_len, deadline))
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
        raw = _read_exact(fd, size, deadline)
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for bad bytes
            raise ProtocolError(f"array {name!r} is not a valid .npy blob ({exc})") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in ALLOWED_KINDS:
            raise ProtocolError(f"array {name!r} has a disallowed dtype")
        arrays[name] = array
    return header, arrays
