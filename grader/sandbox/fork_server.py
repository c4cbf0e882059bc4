"""The pre-imported worker (child side): imports torch once, then forks a fresh worker per submission.

Started inside bubblewrap as `python -I fork_server.py CONTROL_FD TMP_BYTES SITE_DIR...`, with the same
limits and mounts as a worker. It never runs a submission's code itself. For each `fork` request on the
control socket (with the new worker's pipes attached as file descriptors) it forks a *waiter*, which
moves into namespaces of its own and forks the worker:

- a user namespace, in which the worker holds no capabilities and can create no further user namespace
  (so it cannot undo what follows);
- a mount namespace with a fresh `/tmp` and `/dev/shm` and `/dev` read-only, so nothing a submission
  writes is seen by the next one; a PID namespace (the worker is PID 1 there, its own `/proc` shows
  only its own processes, and all of them die with it); IPC, UTS and network namespaces of its own.

The waiter reports the worker's PID, then its exit status, on a status pipe the parent reads. What the
fork server shares with its workers is only what was in memory after the imports, the same for every
submission. This file is bound into the sandbox next to `worker.py`, so it imports only the standard
library and the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import struct
import sys
import threading

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 70  # the waiter's exit code when the namespaces could not be set up (the grader's fault)
WORKER_ID = 1000  # the worker's user and group id in its own user namespace
PIPES = 5  # request (read end), reply (write end), stdout, stderr, status (write ends)

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _call(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: bytes, target: bytes, kind: bytes | None, flags: int, data: bytes | None = None) -> None:
    _call(_libc.mount(source, target, kind, flags, data), f"mount {target.decode()}")


def mounts_below(top: str) -> list[str]:
    """The outermost mount points strictly below `top`, from /proc/self/mountinfo (its octal escapes decoded)."""
    with open("/proc/self/mountinfo") as fh:
        points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in fh}
    below = sorted(p for p in points if p.startswith(top.rstrip("/") + "/"))
    return [p for p in below if not any(p.startswith(q + "/") for q in below)]


def enter_namespaces(tmp_bytes: int) -> None:
    """The waiter's part (it keeps capabilities in the new user namespace until the worker drops them)."""
    uid, gid = os.getuid(), os.getgid()
    _call(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET),
          "unshare")
    # A process that is not dumpable cannot open its own /proc files where bubblewrap maps no root (an unprivileged
    # grader), so the waiter is dumpable while it writes its maps. No worker can reach it meanwhile: each is in a
    # user namespace of its own without capabilities, and the kernel lets a process into another's memory or
    # files only from the same user namespace or with CAP_SYS_PTRACE over the other's.
    _call(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{WORKER_ID} {uid} 1"), ("gid_map", f"{WORKER_ID} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    _call(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    _mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
    size = f"size={tmp_bytes},mode=1777".encode()
    # bubblewrap bound the interpreter's files at their real paths, which may lie under /tmp (a venv there): the
    # fresh /tmp gets the same binds again, from handles opened before it covers them.
    kept = [(point, os.open(point, os.O_PATH | os.O_CLOEXEC)) for point in mounts_below("/tmp")]
    _mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, size)
    for point, handle in kept:
        if os.path.isdir(f"/proc/self/fd/{handle}"):
            os.makedirs(point, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(point), exist_ok=True)
            open(point, "a").close()
        _mount(f"/proc/self/fd/{handle}".encode(), point.encode(), None, MS_BIND | MS_REC)
        os.close(handle)
    _mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, size)
    # A remount keeps the flags bubblewrap locked (nosuid, nodev), or the kernel refuses it.
    _mount(b"none", b"/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # No user namespaces below this one (as bubblewrap's --disable-userns does): the worker cannot gain
    # capabilities anywhere, not even over namespaces of its own.
    with open("/proc/sys/user/max_user_namespaces", "w") as fh:
        fh.write("0")


def become_worker() -> None:
    """The worker's part, as PID 1 of its namespace: its own /proc where the kernel allows it, then no capabilities
    and no way to gain any."""
    # Where bubblewrap covered parts of /proc (it does as root), the kernel refuses a new /proc. The other
    # workers' PIDs then show in the sandbox's /proc, but nothing of them can be opened or signalled: the
    # kernel's ptrace check (which guards /proc/<pid>/mem, environ, fd, ...) wants the same user namespace or
    # CAP_SYS_PTRACE over the other's, and signals and ptrace take PIDs of the worker's own namespace.
    with contextlib.suppress(OSError):
        _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Dumpable, as a worker started on its own is (the fork server is not): it may read its own /proc files.
    _call(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _call(_libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), (_CapData * 2)()), "capset")


def _close_other_fds(keep: set[int]) -> None:
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def run_waiter(fds: list[int], tmp_bytes: int) -> None:
    """Set up the namespaces, fork the worker, report its PID and then its exit status; never returns."""
    request, reply, out, err, status = fds
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the fork server ignores it; this process waits
        os.setsid()
        enter_namespaces(tmp_bytes)
    except OSError as exc:
        os.write(err, f"the sandbox could not give this submission namespaces of its own: {exc}\n".encode())
        os.write(status, struct.pack("<qq", -1, SETUP_FAILED))  # no worker, and why it ended (ForkedWorker)
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        run_worker(request, reply, out, err)
    for fd in (request, reply, out, err):
        os.close(fd)
    os.write(status, struct.pack("<q", pid))
    _, code = os.waitpid(pid, 0)
    os.write(status, struct.pack("<q", os.waitstatus_to_exitcode(code)))
    os._exit(0)


def run_worker(request: int, reply: int, out: int, err: int) -> None:
    """PID 1 of the submission's namespaces: the worker's loop, exactly as in a worker started on its own."""
    code = SETUP_FAILED
    try:
        try:
            os.setsid()  # its own process group, which the parent kills as a whole
            devnull = os.open("/dev/null", os.O_RDONLY)
            for source, target in ((devnull, 0), (out, 1), (err, 2)):
                os.dup2(source, target)
            _close_other_fds({0, 1, 2, request, reply})
            become_worker()
        except OSError as exc:
            os.write(2, f"the sandbox could not start this submission's worker: {exc}\n".encode())
            return
        import worker  # imported by the fork server already: this is a lookup

        code = 1
        # What the submission can see of its process is what it sees in a worker started on its own.
        sys.argv = [f"{os.path.dirname(worker.__file__)}/worker.py", str(request), str(reply), *sys.argv[3:]]
        sys.modules["__main__"] = worker
        worker.Worker(request, reply).serve()
        code = 0
    finally:
        os._exit(code)  # never back into the fork server's loop, whatever the submission raised


def probe(tmp_bytes: int) -> str:
    """'' if a waiter can set up its namespaces here, else why not (e.g. nested user namespaces are off)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            enter_namespaces(tmp_bytes)
            child = os.fork()
            if child == 0:
                become_worker()
                os._exit(0)
            _, code = os.waitpid(child, 0)
            if code != 0:
                raise OSError(0, "the worker could not drop its capabilities")
        except OSError as exc:
            os.write(write_end, str(exc).encode())
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        why = pipe.read().decode(errors="replace")
    _, code = os.waitpid(pid, 0)
    return why or ("" if code == 0 else f"the probe exited with status {code}")


def serve(control: socket.socket, tmp_bytes: int) -> None:
    # Not dumpable (its waiters inherit it): a second lock on its memory and file descriptors, besides the user
    # namespaces that keep every worker out (see become_worker).
    _call(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    # A Python thread would not survive the fork (locks it holds stay held in the child). Native pools are
    # fine: OpenBLAS re-creates its threads after a fork, as it does for multiprocessing and torch's DataLoader.
    threads = threading.active_count()
    why_not = probe(tmp_bytes) if threads == 1 else f"{threads} Python threads after the imports: forking is not safe"
    control.sendall(json.dumps({"ready": True, "forks": not why_not, "why_not": why_not}).encode())
    if why_not:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the waiters
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, PIPES)
        except OSError:
            return
        if not message:  # the grader closed the control socket
            return
        if message != b"fork" or len(fds) != PIPES:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            try:
                control.close()
                run_waiter(fds, tmp_bytes)
            finally:
                os._exit(SETUP_FAILED)
        for fd in fds:
            os.close(fd)


def main() -> None:
    control_fd, tmp_bytes = int(sys.argv[1]), int(sys.argv[2])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `python -I` leaves the script's folder out
    import worker

    worker.prepare(sys.argv[3:])
    import numpy  # noqa: F401 - imported once here, for every worker forked after
    import torch  # noqa: F401
    import trainer  # noqa: F401
    import wire  # noqa: F401

    serve(socket.socket(fileno=control_fd), tmp_bytes)


if __name__ == "__main__":
    main()
