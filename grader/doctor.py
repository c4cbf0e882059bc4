"""`vitgrade doctor`: what the grader sees here, and whether it can grade (Python, torch, sandbox, data)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import site
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grader import __version__
from grader.sandbox.isolation import LEVEL_PROTECTS, Isolation, Limits, interpreter_layout, probe_levels, protections
from grader.sandbox.preflight import PreflightResult, preflight


@dataclass
class Diagnosis:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    preflight: PreflightResult | None = None

    @property
    def ok(self) -> bool:
        """Grading will work: a known-good submission ran in the sandbox students get."""
        return self.preflight is not None and self.preflight.ok

    def describe(self) -> str:
        lines = []
        for title, body in self.sections:
            lines.append(f"{title}:")
            lines += [f"  {line}" for line in body]
        verdict = "grading will work here" if self.ok else "grading will NOT work here (see the preflight above)"
        return "\n".join([*lines, f"verdict: {verdict}"])


def install_layout() -> str:
    """How this Python is installed, in the words users know it by (what the layout tests build)."""
    prefix = Path(sys.prefix)
    if sys.prefix == sys.base_prefix:
        if (prefix / "conda-meta").is_dir():
            return "conda environment (no venv)"
        if prefix.is_relative_to("/usr"):
            return "the system's Python (no venv)"
        return "base interpreter in its own prefix, e.g. pyenv or a python.org build (no venv)"
    try:
        config = (prefix / "pyvenv.cfg").read_text()
    except OSError:
        config = ""
    if (prefix / "pipx_metadata.json").is_file():  # pipx writes it into each venv it manages
        kind = "pipx venv"
    elif re.search(r"^virtualenv\s*=", config, re.M):  # the key virtualenv's creator adds to pyvenv.cfg
        kind = "virtualenv"
    else:
        kind = "venv"
    executable = Path(sys.executable)
    return kind + f" (bin/python is {'a symlink to ' + os.path.realpath(executable) if executable.is_symlink() else 'a copy'})"


def _python() -> list[str]:
    kind = install_layout()
    import grader

    where = Path(grader.__file__).resolve().parent
    with contextlib.suppress(AttributeError, ValueError):  # `site` of some embedded builds lacks it
        if where.is_relative_to(Path(site.getusersitepackages()).resolve()):
            kind += "; vitgrade in the user site-packages (pip install --user)"
    install = "source checkout" if (where.parent / "pyproject.toml").is_file() else "installed package"
    layout = interpreter_layout()
    return [f"python {sys.version.split()[0]} at {sys.executable}: {kind}, prefix {sys.prefix}",
            f"vitgrade {__version__} from {where} ({install})",
            f"sandbox interpreter {layout.executable}; standard library {', '.join(layout.python_trees) or 'under /usr'}",
            f"worker packages: {len(layout.site_entries)} entries (numpy, torch and their requirements) from "
            f"{', '.join(layout.site_dirs)}",
            f"hidden inside bound system folders: {', '.join(layout.hidden) or 'nothing needed hiding'}"]


def _torch() -> list[str]:
    try:
        import torch
    except ImportError as exc:
        return [f"torch cannot be imported: {exc}"]
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"]
    if torch.cuda.is_available():
        lines += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        lines.append("no CUDA device (the accuracy check uses its quick CPU recipe under --accuracy auto)")
    return lines


def _isolation(chosen: Isolation | None) -> list[str]:
    lines = []
    for level, why_not in probe_levels().items():
        state = "available" if not why_not else f"not available: {why_not}"
        lines.append(f"{level}: {state}  [{LEVEL_PROTECTS[level]}]")
    levels = [level for level, why_not in probe_levels().items() if not why_not]
    use = chosen or levels[0]
    lines.append(f"grading uses: {use}; in force: {'; '.join(protections(use)[1:])}")
    return lines


def _data(data_dir: Path | None) -> list[str]:
    from grader.training.calibration import cache_file
    from grader.training.data import DatasetMissing, find_dataset

    try:
        dataset = find_dataset(data_dir)
        lines = [f"{dataset.name}: {len(dataset.x_train)} training and {len(dataset.x_test)} test images "
                 f"({dataset.source})"]
    except DatasetMissing as exc:
        lines = [f"no dataset (only --accuracy off works): {exc}"]
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    lines.append(f"cached reference accuracies in {path}: {len(cached) or 'none'}")
    for entry in cached.values():
        if isinstance(entry, dict):
            lines.append(f"  {entry.get('mode')} on {entry.get('dataset')} ({entry.get('device')}): "
                         f"{float(entry.get('accuracy', 0)):.1%}")
    return lines


def diagnose(limits: Limits | None = None, isolation: Isolation | None = None,
             data_dir: Path | None = None) -> Diagnosis:
    """Everything `vitgrade doctor` prints; `isolation` None means the level grading would choose."""
    diagnosis = Diagnosis()
    diagnosis.sections.append(("python", _python()))
    diagnosis.sections.append(("torch", _torch()))
    diagnosis.sections.append(("isolation levels", _isolation(isolation)))
    diagnosis.preflight = preflight(limits, isolation)
    diagnosis.sections.append(("preflight", [diagnosis.preflight.describe()]))
    diagnosis.sections.append(("data", _data(data_dir)))
    return diagnosis
