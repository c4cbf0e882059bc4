"""How the worker is isolated: bubblewrap, else `unshare`, else a plain subprocess."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
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


def _probe(command: list[str]) -> str:
    """'' when `command` succeeds, else why not (its stderr, or the error starting it)."""
    try:
        done = subprocess.run(command, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode == 0:
        return ""
    return f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.decode(errors='replace').strip()[-500:]}"


@cache
def probe_levels() -> dict[Isolation, str]:
    """Every isolation level with '' if it works here, else why not (probed once per process)."""
    found: dict[Isolation, str] = {"bwrap": "bubblewrap needs Linux", "unshare": "unshare needs Linux", "none": ""}
    if sys.platform.startswith("linux"):
        bwrap = shutil.which("bwrap")
        found["bwrap"] = _probe([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                                 "--dev", "/dev", "true"]) if bwrap else "bwrap is not installed (not on PATH)"
        unshare = shutil.which("unshare")
        found["unshare"] = _probe([unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                                   "true"]) if unshare else "unshare (util-linux) is not installed"
    return found


def available_levels() -> tuple[Isolation, ...]:
    """The isolation levels that work on this machine, best first."""
    return tuple(level for level, why_not in probe_levels().items() if not why_not)


def choose_level(requested: Isolation | None = None) -> Isolation:
    """`requested` if available (else an error), otherwise the best available level."""
    levels = available_levels()
    if requested is None:
        return levels[0]
    if requested not in levels:
        raise RuntimeError(f"isolation level {requested!r} is not available here (available: {', '.join(levels)})")
    return requested


def worker_files() -> dict[str, Path]:
    """The files the sandbox may see from the grader: the worker, its framing, the trainer and its recipe."""
    here = Path(__file__).resolve().parent
    return {
        "worker.py": here / "worker.py",
        "fork_server.py": here / "fork_server.py",
        "wire.py": here / "wire.py",
        "trainer.py": here.parent / "training" / "trainer.py",
        "recipe.py": here.parent / "training" / "recipe.py",
    }


def library_dirs() -> list[str]:
    """sys.path entries the worker needs for numpy and torch (also when installed with --user)."""
    dirs = []
    for name in WORKER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            dirs.append(str(Path(spec.origin).resolve().parent.parent))
    return list(dict.fromkeys(dirs))


# -- what bubblewrap lets the worker see: an allow-list ---------------------------------------------
WORKER_PACKAGES = ("numpy", "torch")  # what student code and the worker import (with their dependencies)
PROTECTED = ("grader", "reference", "assignments")  # never bound, whatever depends on what
SYSTEM_TOPS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
# Never covered by an empty directory: the C library and the tools the interpreter needs live there.
ESSENTIAL = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/share")


@dataclass(frozen=True)
class Layout:
    """Where this interpreter and the worker's packages really are (resolved paths), for bubblewrap.

    Only these are bound, at their real paths: the system directories (minus every site-packages
    and the grader's own folders inside them), the interpreter binary, its standard library and
    shared libraries, and one bind per top-level entry (package, `.libs`, `.dist-info`) of numpy,
    torch and what they require. Nothing else of the grader's environment exists in the sandbox, so
    no path alias (a venv reached through a symlinked `/home`) can reach the grader or the reference.
    """

    executable: str
    python_trees: tuple[str, ...]
    python_files: tuple[str, ...]
    site_entries: tuple[str, ...]
    site_dirs: tuple[str, ...]
    hidden: tuple[str, ...]


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _requirements(dist: importlib.metadata.Distribution, extras: set[str]) -> list[tuple[str, set[str]]]:
    """Names (with extras) this distribution requires at run time, markers other than extras ignored:
    an installed dependency bound needlessly costs nothing; one missing would break the import."""
    found = []
    for line in dist.requires or []:
        requirement, _, marker = line.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)""", marker)
        if extra and extra.group(1) not in extras:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
        if match:
            wanted = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
            found.append((match.group(1), wanted))
    return found


def _distributions(roots: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions of `roots` and everything they require, transitively."""
    seen: dict[tuple[str, frozenset[str]], None] = {}
    found: dict[str, importlib.metadata.Distribution] = {}
    queue: list[tuple[str, set[str]]] = [(name, set()) for name in roots]
    while queue:
        name, extras = queue.pop()
        key = (re.sub(r"[-_.]+", "-", name).lower(), frozenset(extras))
        if key in seen:
            continue
        seen[key] = None
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[key[0]] = dist
        queue += _requirements(dist, extras)
    return list(found.values())


def _site_entries() -> set[str]:
    """Real paths of the top-level site-packages entries numpy, torch and their requirements own."""
    entries: set[str] = set()
    for dist in _distributions(WORKER_PACKAGES):
        site_dir = Path(_real(dist.locate_file("")))
        # RECORD lists every installed file (read as text: torch's has tens of thousands of lines).
        record = dist.read_text("RECORD") or ""
        tops = {line.split(",", 1)[0].split("/", 1)[0] for line in record.splitlines() if line.strip()}
        tops -= {"..", "__pycache__", ""}
        if not tops:  # no RECORD: the import names it declares
            tops = set((dist.read_text("top_level.txt") or "").split())
        for top in tops:
            for candidate in (site_dir / top, site_dir / f"{top}.libs"):
                if candidate.exists() and candidate.name.split(".")[0] not in PROTECTED:
                    entries.add(str(candidate))
    for name in WORKER_PACKAGES:  # installed without metadata (a source build): the package itself
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                entries.add(_real(location))
                libs = Path(_real(location) + ".libs")
                if libs.is_dir():
                    entries.add(str(libs))
    return entries


def _grader_locations() -> set[str]:
    """Everywhere the grader, the reference and the assignment files are, under any import path entry,
    plus the source checkout they come from and the working directory."""
    places = {_real(os.getcwd())}
    for name in PROTECTED:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            places |= {_real(p) for p in spec.submodule_search_locations}
        for entry in sys.path:
            candidate = Path(entry or ".") / name
            if candidate.is_dir():
                places.add(_real(candidate))
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        places.add(str(checkout))
    return places


# Other Pythons' package folders inside /usr (a system-wide install of the grader would be there).
SYSTEM_SITE_GLOBS = ("/usr/lib/python3*/*-packages", "/usr/lib64/python3*/*-packages",
                     "/usr/local/lib/python3*/*-packages", "/usr/local/lib64/python3*/*-packages")


def _site_dirs() -> set[str]:
    """Every directory packages may be installed into, for this interpreter, its base and the system."""
    dirs = {p for p in sys.path if p and os.path.isdir(p)}
    dirs |= {str(p) for pattern in SYSTEM_SITE_GLOBS for p in Path("/").glob(pattern.lstrip("/"))}
    with contextlib.suppress(AttributeError):  # `site` of some embedded builds lacks these
        dirs |= set(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    for base in (sys.prefix, sys.base_prefix):
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
        dirs |= {paths["purelib"], paths["platlib"]}
    return {_real(d) for d in dirs if os.path.isdir(d)}


# sysconfig's build-time values (DESTSHARED, LIBDIR) name the prefix Python was built in. A prefix that
# was moved keeps them: conda-pack's archives before `conda-unpack`, a copied pyenv or python.org tree,
# python-build-standalone builds (uv, rye, pdm). There they point elsewhere or nowhere, so the folders
# come from where this running interpreter really found its pieces; the build-time values only add to them.
def _extension_dirs() -> set[str]:
    """The standard library's extension-module folders: lib-dynload as the interpreter computed it at
    startup (from its own location, on sys.path), and as it was built."""
    found = [p for p in sys.path if os.path.basename(p) == "lib-dynload"]
    found.append(sysconfig.get_config_var("DESTSHARED") or "")
    return {_real(p) for p in found if p and os.path.isdir(p)}


def _shared_library_dirs() -> set[str]:
    """Folders holding libpython and the libraries the standard library links to: the one libpython
    was really loaded from (Linux), the prefix's `lib`, and the build-time LIBDIR."""
    found = [os.path.join(sys.base_exec_prefix, sys.platlibdir), sysconfig.get_config_var("LIBDIR") or ""]
    # No /proc: not Linux, where bubblewrap does not run anyway.
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        found += [os.path.dirname(line.split(None, 5)[-1].strip()) for line in maps if "/libpython" in line]
    return {_real(p) for p in found if p and os.path.isdir(p)}


@cache
def interpreter_layout() -> Layout:
    """This interpreter's layout, resolved (computed once per process)."""
    executable = _real(getattr(sys, "_base_executable", "") or sys.executable)
    if not os.access(executable, os.X_OK):
        executable = _real(sys.executable)
    stdlib = {_real(os.path.dirname(os.__file__)), *_extension_dirs()}
    # Python's C headers: torch.compile (inductor, Triton's launcher) builds C extensions against them.
    stdlib |= {_real(p) for key in ("include", "platinclude")
               if os.path.isdir(p := sysconfig.get_paths(vars={"base": sys.base_prefix,
                                                                "platbase": sys.base_exec_prefix})[key])}
    systems = [_real(top) for top in SYSTEM_TOPS if os.path.isdir(top)]
    trees = sorted(p for p in stdlib if not any(_inside(p, top) for top in systems))
    files: set[str] = set()
    for libdir in _shared_library_dirs():
        if not any(_inside(libdir, top) for top in systems):
            # libpython and, in a conda-style prefix, the libraries the standard library's modules link to.
            files |= {str(p) for p in Path(libdir).iterdir() if ".so" in p.name and p.is_file()}
    entries = _site_entries()
    site_dirs = [d for d in dict.fromkeys(_real(p) for p in sys.path if p) if any(
        os.path.dirname(e) == d for e in entries)]
    site_dirs += sorted({os.path.dirname(e) for e in entries} - set(site_dirs))
    needed = [executable, *stdlib, *(ESSENTIAL if os.path.isdir("/usr") else ())]
    visible = systems + trees
    hidden = {p for p in _site_dirs() | _grader_locations()
              if any(_inside(p, tree) and p != tree for tree in visible)  # inside what is bound
              and not any(_inside(n, p) for n in needed)}  # and not holding what must stay
    hidden = {p for p in hidden if not any(_inside(p, q) and p != q for q in hidden)}  # outermost only
    return Layout(executable, tuple(trees), tuple(sorted(files)), tuple(sorted(entries)), tuple(site_dirs),
                  tuple(sorted(hidden)))


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
    """Mounts in an order where nothing later hides what the worker needs: scratch first, then the
    system, the interpreter, empty directories over what must stay hidden, then the allowed packages."""
    layout = interpreter_layout()
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for top in SYSTEM_TOPS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--ro-bind-try", "/sys", "/sys"]
    for path in [*layout.python_trees, *layout.python_files, layout.executable]:
        args += ["--ro-bind", path, path]
    for path in layout.hidden:  # site-packages and the grader's folders inside what is bound above
        args += ["--size", str(1024**2), "--tmpfs", path]
    for path in layout.site_entries:
        args += ["--ro-bind", path, path]
    if limits.cuda:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    args += ["--dir", SANDBOX_DIR]
    for name, path in worker_files().items():
        args += ["--ro-bind", str(path), f"{SANDBOX_DIR}/{name}"]
    for path in layout.hidden:
        args += ["--remount-ro", path]
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
    if level == "bwrap":
        worker = f"{SANDBOX_DIR}/worker.py"
        layout = interpreter_layout()
        # bwrap's own init process is PID 1 inside the sandbox, and /proc/1/environ is readable there:
        # it must start with the scrubbed environment too, not only the worker.
        command = _bwrap_prefix(limits) + [layout.executable, "-I", "-B", "-u", worker, str(in_fd), str(out_fd),
                                           *layout.site_dirs]
        return command, environment(limits)
    sites = library_dirs()
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


def fork_server_command(limits: Limits, control_fd: int) -> tuple[list[str], dict[str, str]]:
    """The command line that starts a fork server (fork_server.py) in bubblewrap, with the mounts, environment and
    limits a worker gets, and its environment."""
    layout = interpreter_layout()
    command = _bwrap_prefix(limits) + [layout.executable, "-I", "-B", "-u", f"{SANDBOX_DIR}/fork_server.py",
                                       str(control_fd), str(limits.tmp_bytes), *layout.site_dirs]
    return command, environment(limits)


def platform_protections() -> dict[str, bool]:
    """Which of the worker's limits this platform can enforce (a student's Windows or macOS laptop has
    fewer than the grading machine); the report lists them."""
    try:
        import resource
    except ImportError:
        resource = None  # type: ignore[assignment]
    linux = sys.platform.startswith("linux")
    return {
        "rlimits": resource is not None,  # CPU time, file size, address space
        # root is exempt from RLIMIT_NPROC; the PID namespace and the process-tree kill remain
        "process_limit": resource is not None and hasattr(resource, "RLIMIT_NPROC") and os.path.isdir("/proc")
        and hasattr(os, "getuid") and os.getuid() != 0,
        "die_with_grader": linux,
        "memory_watch": os.path.isdir("/proc"),  # RSS of the whole process tree
    }


LEVEL_PROTECTS = {
    "bwrap": "bubblewrap: private filesystem (only Python, numpy and torch visible), no network, own PIDs",
    "unshare": "unshare: no network, own PIDs; the filesystem is readable",
    "none": "plain subprocess: scrubbed environment and a scratch folder only; files and network reachable",
}


# The client's own limits, enforced from the parent on every platform (Windows included).
ALWAYS_PROTECTS = "wall-clock time limits that kill the worker's process tree; output and reply-size caps"


def protections(level: Isolation) -> list[str]:
    """The protections in force for a worker at `level` on this platform, for the report."""
    found = [LEVEL_PROTECTS[level]]
    names = {"rlimits": "CPU time, file size and address-space limits", "process_limit": "process-count limit",
             "die_with_grader": "worker dies with the grader", "memory_watch": "memory watch over the process tree"}
    found += [text for key, text in names.items() if platform_protections()[key]]
    found.append(ALWAYS_PROTECTS)
    return found


def apply_limits(limits: Limits) -> None:
    """Runs in the child between fork and exec: rlimits, and die when the grader dies (what the
    platform has of them; see platform_protections)."""
    try:
        import resource
    except ImportError:
        return _die_with_parent()
    soft_as = limits.memory_bytes + 8 * 1024**3  # torch maps ~3 GB of address space it never touches
    for name, value in (
        ("RLIMIT_CPU", limits.cpu_seconds),
        ("RLIMIT_FSIZE", limits.file_bytes),
        ("RLIMIT_CORE", 0),
        # RLIMIT_AS breaks the CUDA driver; there the client's RSS watch is the memory limit. macOS
        # does not enforce it (setting it fails), so it is best effort there.
        ("RLIMIT_AS", None if limits.cuda else soft_as),
    ):
        if value is not None and hasattr(resource, name):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(getattr(resource, name), (value, value))
    if hasattr(resource, "RLIMIT_NPROC") and os.path.isdir("/proc") and os.getuid() != 0:
        # RLIMIT_NPROC counts every task of the user, so allow for those already running.
        # Root is exempt from it; there the PID namespace and the client's watchdog remain.
        running = len(os.listdir("/proc"))
        resource.setrlimit(resource.RLIMIT_NPROC, (running + limits.processes, running + limits.processes))
    _die_with_parent()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
