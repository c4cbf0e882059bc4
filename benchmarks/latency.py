"""How long a student waits for `vitgrade check`, and how many submissions per minute `vitgrade grade` grades.

Times whole commands (wall clock, and the CPU of every process they waited for) several times, the
baseline and this checkout in turn (A B A B ...), so that both see the same machine load; prints each
median and the median of the run-by-run ratios, this checkout over the baseline. The baseline is a git ref checked
out into a temporary worktree (`--baseline-ref`), or none.

    python benchmarks/latency.py --baseline-ref main --runs 3
    python benchmarks/latency.py --skip-batch --runs 5      # the check's latency only, no baseline
    python benchmarks/latency.py --baseline-ref main --copies 4   # a class of 44: steady-state throughput

CPU is the machine's busy time during each command (/proc/stat): the sandboxed workers are reaped inside their
own PID namespace, where getrusage cannot see them; on a shared machine it includes the others' load too.

Run it on a quiet machine: the load average is printed before and after, and a shared machine's
numbers vary by a factor of two or more; trust the ratios of runs made together, not single times.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path("assignments/vit_cifar10/examples")
CHECKED = EXAMPLES / "s1002_separate_qkv.py"


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def median(self, what: str) -> float:
        return statistics.median(getattr(self, what))


def busy_cpu_seconds() -> float | None:
    """Seconds all CPUs have been busy since boot (/proc/stat), or None without /proc. Unlike getrusage, this
    sees the sandboxed workers, which are reaped inside their own PID namespace; it also sees any other load."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the machine's busy time during the command, else the command's own and what it
    waited for), and its exit code."""
    before, busy_before = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    if busy_before is not None and busy_after is not None:
        return wall, busy_after - busy_before, done.returncode
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def check_command() -> list[str]:
    return [sys.executable, "-m", "grader", "check", str(CHECKED), "--accuracy", "off"]


def batch_command(out: Path, folder: Path) -> list[str]:
    return [sys.executable, "-m", "grader", "grade", str(folder), "--out", str(out), "--accuracy", "off",
            "--quiet", "--no-resume"]


def example_entries() -> list[Path]:
    return sorted(p for p in (ROOT / EXAMPLES).iterdir()
                  if not p.name.startswith((".", "_")) and (p.is_dir() or p.suffix in (".py", ".ipynb", ".zip")))


def class_folder(scratch: Path, copies: int) -> Path:
    """The example submissions `copies` times over, each copy under its own student id (s1001_handout_c2.ipynb):
    a class large enough that the batch's fixed costs (imports, preflight, summary) stop dominating."""
    folder = scratch / "class"
    folder.mkdir()
    for copy in range(1, copies + 1):
        for entry in example_entries():
            target = folder / (f"{entry.name}_c{copy}" if entry.is_dir() else f"{entry.stem}_c{copy}{entry.suffix}")
            (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, target)
    return folder


def measure(trees: dict[str, Path], runs: int, batch: bool, copies: int) -> dict[str, dict[str, Timings]]:
    results = {name: {"check": Timings(), "batch": Timings()} for name in trees}
    scratch = Path(tempfile.mkdtemp(prefix="vitgrade-latency-"))
    folder = class_folder(scratch, copies)
    try:
        for tree in trees.values():  # warm-up: file caches, and the reference accuracy cache
            timed(check_command(), tree)
        for run in range(runs):
            for name, tree in trees.items():
                wall, cpu, code = timed(check_command(), tree)
                if code not in (0, 1):
                    raise SystemExit(f"{name}: vitgrade check exited {code}")
                results[name]["check"].wall.append(wall)
                results[name]["check"].cpu.append(cpu)
                print(f"  run {run + 1} {name:8s} check {wall:6.2f} s wall {cpu:6.2f} s CPU", flush=True)
            if not batch:
                continue
            for name, tree in trees.items():
                wall, cpu, code = timed(batch_command(scratch / f"{name}-{run}", folder), tree)
                if code != 0:
                    raise SystemExit(f"{name}: vitgrade grade exited {code}")
                results[name]["batch"].wall.append(wall)
                results[name]["batch"].cpu.append(cpu)
                print(f"  run {run + 1} {name:8s} batch {wall:6.2f} s wall {cpu:6.2f} s CPU", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def report(results: dict[str, dict[str, Timings]], batch: bool, copies: int) -> None:
    """Medians, and the median of the run-by-run ratios (each pair ran back to back, under the same load)."""
    count = len(example_entries()) * copies
    names = list(results)
    print(f"\n{'':30s}" + "".join(f"{name:>14s}" for name in names) + ("   this/baseline, median of pairs" if len(names) > 1 else ""))

    def row(label: str, command: str, what: str, per_minute: bool = False) -> None:
        series = [getattr(results[n][command], what) for n in names]
        if per_minute:
            series = [[60 * count / v for v in values] for values in series]
        ratio = f"   {statistics.median(a / b for a, b in zip(*series, strict=True)):.2f}" if len(series) > 1 else ""
        print(f"{label:30s}" + "".join(f"{statistics.median(values):14.2f}" for values in series) + ratio)

    row("check wall s (median)", "check", "wall")
    row("check CPU s (median)", "check", "cpu")
    if batch:
        row(f"batch of {count} wall s (median)", "batch", "wall")
        row("batch CPU s (median)", "batch", "cpu")
        row("submissions per minute", "batch", "wall", per_minute=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", help="git ref to compare with (checked out into a temporary worktree)")
    parser.add_argument("--runs", type=int, default=3, help="counted runs of each command (after one warm-up check)")
    parser.add_argument("--skip-batch", action="store_true", help="time `vitgrade check` only")
    parser.add_argument("--copies", type=int, default=1, help="grade the examples this many times over in one batch")
    args = parser.parse_args(argv)
    trees = {"this": ROOT}
    worktree = None
    if args.baseline_ref:
        worktree = Path(tempfile.mkdtemp(prefix="vitgrade-baseline-")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(worktree), args.baseline_ref], cwd=ROOT,
                       check=True)
        trees["baseline"] = worktree
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs", flush=True)
    try:
        results = measure(trees, args.runs, not args.skip_batch, args.copies)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
            shutil.rmtree(worktree.parent, ignore_errors=True)
    report(results, not args.skip_batch, args.copies)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
