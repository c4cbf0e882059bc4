"""The pyproject.toml and wheel metadata of the packages vitgrade builds, pinned from the project's own requirements.

Two packages are built from this checkout (or installed copy): the student bundle (`grader.bundle`) and the
copy of the grader inside Gradescope's autograder zip (`grader.lms.gradescope_autograder`). Both describe
themselves with a `Distribution`; their version pins and Python requirement are the project's own, read here.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from functools import cache

from assignments import PROJECT_ROOT

PROJECT = "vit-autograder"  # the project's own distribution name, for its installed metadata
SCRIPTS = {"vitgrade": "grader.cli:main"}  # the command every package vitgrade builds installs
BUILD_SYSTEM = {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"}


@cache
def _project() -> tuple[str, tuple[str, ...]]:
    """The project's (requires-python, requirements without extras): from pyproject.toml in a checkout, else from
    the installed package's metadata."""
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.is_file():
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib

        project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
        return project["requires-python"], tuple(project["dependencies"])
    from importlib.metadata import metadata

    installed = metadata(PROJECT)
    requirements = installed.get_all("Requires-Dist") or []
    return installed["Requires-Python"], tuple(r for r in requirements if "extra ==" not in r)


def requires_python() -> str:
    """The Python versions the project supports (its `requires-python`)."""
    return _project()[0]


def project_requirements() -> list[str]:
    """The project's requirements (its `dependencies`, no extras), pins and markers as written there."""
    return list(_project()[1])


def requirement_name(requirement: str) -> str:
    """The distribution a requirement names, normalised (PEP 503): `Jinja2>=3.1` and `jinja2` both give `jinja2`."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pinned(names: list[str] | tuple[str, ...]) -> list[str]:
    """The project's own requirement (version pin and marker) for each of `names`, in their order."""
    own = {requirement_name(r): r for r in project_requirements()}
    missing = [name for name in names if requirement_name(name) not in own]
    if missing:
        raise LookupError(f"not among {PROJECT}'s requirements: {', '.join(missing)}")
    return [own[requirement_name(name)] for name in names]


@dataclass(frozen=True)
class Distribution:
    """A package vitgrade builds: what its pyproject.toml and its wheel's .dist-info say."""

    name: str
    version: str
    dependencies: tuple[str, ...]
    packages: tuple[str, ...]  # top-level packages (each found with its subpackages)
    package_data: dict[str, tuple[str, ...]] = field(default_factory=dict)  # package -> glob patterns
    description: str | None = None
    requires_python: str = field(default_factory=requires_python)

    def pyproject(self) -> str:
        """pyproject.toml for setuptools (strings written as JSON strings, which TOML reads the same)."""
        q = json.dumps
        project = [f"name = {q(self.name)}", f"version = {q(self.version)}"]
        if self.description is not None:
            project.append(f"description = {q(self.description)}")
        project += [f"requires-python = {q(self.requires_python)}",
                    "dependencies = [\n" + "".join(f"    {q(d)},\n" for d in self.dependencies) + "]"]
        return "\n".join([
            "[build-system]", *(f"{key} = {q(value)}" for key, value in BUILD_SYSTEM.items()), "",
            "[project]", *project, "",
            "[project.scripts]", *(f"{name} = {q(target)}" for name, target in SCRIPTS.items()), "",
            "[tool.setuptools.packages.find]", f"include = {q([f'{p}*' for p in self.packages])}", "",
            "[tool.setuptools.package-data]", *(f"{p} = {q(list(globs))}" for p, globs in self.package_data.items()),
        ]) + "\n"

    def dist_info(self) -> dict[str, bytes]:
        """The wheel's .dist-info files other than RECORD (PEP 427, core metadata 2.1), by file name."""
        metadata = ["Metadata-Version: 2.1", f"Name: {self.name}", f"Version: {self.version}"]
        if self.description is not None:
            metadata.append(f"Summary: {self.description}")
        metadata += [f"Requires-Python: {self.requires_python}", *(f"Requires-Dist: {d}" for d in self.dependencies)]
        scripts = "".join(f"{name} = {target}\n" for name, target in SCRIPTS.items())
        return {"METADATA": ("\n".join(metadata) + "\n").encode(),
                "WHEEL": b"Wheel-Version: 1.0\nGenerator: vitgrade\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
                "entry_points.txt": f"[console_scripts]\n{scripts}".encode(),
                "top_level.txt": ("\n".join(self.packages) + "\n").encode()}
