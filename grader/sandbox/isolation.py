"""How the worker is isolated: bubblewrap, else `unshare`, else a plain subprocess."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Isolation = Literal["bwrap", "unshare", "none"]
SANDBOX_DIR = "/vitgrade"  # where the worker's own files appear inside bubblewrap
# System files the interpreter and torch need; everything else in /etc stays hidden.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "alternatives", "hosts")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one worker; wall-clock limits are the client's."""

    memory_bytes: int = 6 * 1024**3
    cpu_seconds: int = 3600
    file_bytes: int = 64 * 1024**2
    tmp_bytes: int = 256 * 1024**2
    processes: int = 512
    output_bytes: int = 256 * 1024
    threads: int = 0  # 0: leave torch's default
    cuda: bool = False
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for this worker (one GPU per worker in a batch)


def _probe(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@cache
def available_levels() -> tuple[Isolation, ...]:
    """The isolation levels that work on this machine, best first (probed once per process)."""
    levels: list[Isolation] = []
    if sys.platform.startswith("linux"):
        bwrap = shutil.which("bwrap")
        if bwrap and _probe([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                             "--dev", "/dev", "true"]):
            levels.append("bwrap")
        unshare = shutil.which("unshare")
        if unshare and _probe([unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "true"]):
            levels.append("unshare")
    levels.append("none")
    return tuple(levels)


def choose_level(requested: Isolation | None = None) -> Isolation:
    """`requested` if available (else an error), otherwise the best available level."""
    levels = available_levels()
    if requested is None:
        return levels[0]
    if requested not in levels:
        raise RuntimeError(f"isolation level {requested!r} is not available here (available: {', '.join(levels)})")
    return requested


def worker_files() -> dict[str, Path]:
    """The files the sandbox may see from the grader: the worker, its framing and the trainer."""
    here = Path(__file__).resolve().parent
    return {
        "worker.py": here / "worker.py",
        "wire.py": here / "wire.py",
        "trainer.py": here.parent / "training" / "trainer.py",
    }


def library_dirs() -> list[str]:
    """sys.path entries the worker needs for numpy and torch (also when installed with --user)."""
    dirs = []
    for name in ("numpy", "torch"):
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            dirs.append(str(Path(spec.origin).resolve().parent.parent))
    return list(dict.fromkeys(dirs))


def hidden_packages() -> list[str]:
    """Every copy of the grader, the reference solution and the assignment files on the import path.

    An installed copy and a source checkout can both exist; each is hidden from student code.
    """
    hidden = set()
    for name in ("grader", "reference", "assignments"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            hidden |= {str(Path(p).resolve()) for p in spec.submodule_search_locations}
        for entry in [*sys.path, *library_dirs()]:
            candidate = Path(entry or ".") / name
            if (candidate / "__init__.py").is_file():
                hidden.add(str(candidate.resolve()))
    return sorted(hidden)


def environment(limits: Limits) -> dict[str, str]:
    """The scrubbed environment: nothing of the grader's survives."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }
    if limits.threads:
        env["OMP_NUM_THREADS"] = str(limits.threads)
    # torch.compile's default pool of compiler processes would count against the worker's memory
    # limit (the RSS watch covers the whole process tree): compile in the worker itself.
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    if not limits.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif limits.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = limits.gpu
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def _bwrap_prefix(limits: Limits) -> list[str]:
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    python_dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent.parent)}
    for path in sorted(python_dirs | set(library_dirs())):
        if not path.startswith(("/usr/", "/bin", "/lib")):
            args += ["--ro-bind", path, path]
    # Python's own executable may be a symlink (venv); bind its target too.
    args += ["--ro-bind", sys.executable, sys.executable]
    args += ["--proc", "/proc", "--dev", "/dev", "--ro-bind-try", "/sys", "/sys"]
    if limits.cuda:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    # Scratch: a size-limited tmpfs (nothing persists); the grader's packages are hidden under empty ones.
    args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    hidden_init = Path(__file__).resolve().parent / "hidden_package.py"
    for path in hidden_packages():
        args += ["--tmpfs", path, "--ro-bind", str(hidden_init), f"{path}/__init__.py"]
    args += ["--dir", SANDBOX_DIR]
    for name, path in worker_files().items():
        args += ["--ro-bind", str(path), f"{SANDBOX_DIR}/{name}"]
    args += ["--remount-ro", "/", "--chdir", "/tmp"]
    for key, value in environment(limits).items():
        args += ["--setenv", key, value]
    return args


def build_command(level: Isolation, limits: Limits, in_fd: int, out_fd: int,
                  scratch: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line that starts the worker at `level`, and the scrubbed environment to start it with.

    Without bubblewrap the worker runs in a scratch directory the client creates and removes; the
    worker's files are copied there, so it sees the same files as under bubblewrap.
    """
    sites = library_dirs()
    if level == "bwrap":
        worker = f"{SANDBOX_DIR}/worker.py"
        # bwrap's own init process is PID 1 inside the sandbox, and /proc/1/environ is readable there:
        # it must start with the scrubbed environment too, not only the worker.
        command = _bwrap_prefix(limits) + [sys.executable, "-I", "-B", "-u", worker, str(in_fd), str(out_fd), *sites]
        return command, environment(limits)
    if scratch is None:
        raise ValueError(f"isolation level {level!r} needs a scratch directory")
    folder = Path(scratch) / "vitgrade-worker"
    folder.mkdir()
    for name, path in worker_files().items():
        shutil.copyfile(path, folder / name)
    worker = str(folder / "worker.py")
    command = [sys.executable, "-I", "-B", "-u", worker, str(in_fd), str(out_fd), *sites]
    if level == "unshare":
        command = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                   "--mount-proc", *command]
    return command, environment(limits)


def apply_limits(limits: Limits) -> None:
    """Runs in the child between fork and exec: rlimits, and die when the grader dies."""
    soft_as = limits.memory_bytes + 8 * 1024**3  # torch maps ~3 GB of address space it never touches
    for name, value in (
        ("RLIMIT_CPU", limits.cpu_seconds),
        ("RLIMIT_FSIZE", limits.file_bytes),
        ("RLIMIT_CORE", 0),
        # RLIMIT_AS breaks the CUDA driver; there the client's RSS watch is the memory limit.
        ("RLIMIT_AS", None if limits.cuda else soft_as),
    ):
        if value is not None:
            resource.setrlimit(getattr(resource, name), (value, value))
    if os.getuid() != 0:
        # RLIMIT_NPROC counts every task of the user, so allow for those already running.
        # Root is exempt from it; there the PID namespace and the client's watchdog remain.
        running = len(os.listdir("/proc"))
        resource.setrlimit(resource.RLIMIT_NPROC, (running + limits.processes, running + limits.processes))
    _die_with_parent()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
