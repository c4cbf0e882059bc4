"""Process trees and capped output readers: what the grader uses to watch and kill its workers."""

from __future__ import annotations

import os
import threading


class CappedReader(threading.Thread):
    """Drains a pipe, keeping the first `cap` bytes; the rest is counted and dropped."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap = fd, cap
        self.data = bytearray()
        self.dropped = 0

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0, closefd=True) as pipe:
            while chunk := pipe.read(1 << 16):
                room = self.cap - len(self.data)
                self.data += chunk[:room]
                self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + (f"\n[... {self.dropped} more bytes not kept]" if self.dropped else "")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (Linux); just `pid` elsewhere."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    queue += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return found
