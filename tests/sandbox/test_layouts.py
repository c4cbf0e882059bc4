"""The sandbox starts however Python was installed, and shows the worker nothing of the grader.

Each layout is a real interpreter layout (a venv made by `python -m venv`, symlinked or `--copies`,
from this interpreter or from the system's Debian Python) with the grader installed in it as pip
does (a copy of the packages in the venv's site-packages). To keep CI cheap, numpy, torch and the
other dependencies are symlinks to this test run's own installation instead of copies: the
interpreter layout is what is under test. Each layout grades one correct example to full code marks
under bubblewrap, run the way users run it (the venv's python, outside the checkout).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from grader.sandbox import available_levels

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "fixtures" / "handout_vit.py"  # the handout's own classes: a correct submission
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
SYSTEM_PYTHON = Path("/usr/bin/python3")
NON_ROOT = "vitgrade-ci"
RUNUSER = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")

pytestmark = [pytest.mark.slow, pytest.mark.skipif("bwrap" not in available_levels(), reason="needs bubblewrap")]


def make_venv(folder: Path, python: str = sys.executable, copies: bool = False, owner: str | None = None) -> Path:
    """A venv at `folder` with the grader installed into it; returns its bin/python (as the venv made it)."""
    command = [python, "-m", "venv", "--without-pip", *(["--copies"] if copies else []), str(folder)]
    subprocess.run(_as(owner, command), check=True, capture_output=True)
    venv_python = folder / "bin" / "python"
    site = Path(subprocess.run(_as(owner, [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]),
                               check=True, capture_output=True, text=True).stdout.strip())
    for entry in SITE.iterdir():
        if entry.name not in ("grader", "reference", "assignments") and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    for package in ("grader", "reference", "assignments"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    if owner:
        subprocess.run(["chown", "-R", owner, str(folder)], check=True)
    return venv_python


def clean_env(python: Path, home: Path) -> dict[str, str]:
    """What a user's shell passes: no PYTHONPATH pointing into the checkout."""
    return {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def _as(owner: str | None, command: list[str]) -> list[str]:
    return [RUNUSER or "runuser", "-u", owner, "--", *command] if owner else command


def grade_example(python: Path, cwd: Path, owner: str | None = None) -> dict:
    """`vitgrade check` on one correct example, run with the venv's python from outside the checkout."""
    out = cwd / f"report-{uuid.uuid4().hex[:6]}.json"
    env = clean_env(python, cwd)
    result = subprocess.run(_as(owner, [str(python), "-m", "grader", "check", str(EXAMPLE), "--accuracy", "off",
                                        "--json", str(out)]), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def assert_full_code_marks(report: dict) -> None:
    code = [c for c in report["checks"] if not c["id"].startswith("task") and c["status"] != "skipped"]
    assert code and all(c["status"] == "passed" for c in code), [(c["id"], c["message"]) for c in code
                                                                  if c["status"] != "passed"]
    assert report["sandbox"]["isolation"] == "bwrap"


@pytest.fixture
def place(request, tmp_path_factory) -> Path:
    """A fresh folder under /tmp, /var/tmp or pytest's own temporary folder, removed afterwards."""
    parent = getattr(request, "param", None)
    folder = Path(parent) / f"vitgrade-layout-{uuid.uuid4().hex[:8]}" if parent else tmp_path_factory.mktemp("layout")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(("place", "copies"), [("/tmp", False), ("/var/tmp", True)], indirect=["place"],
                         ids=["symlinked-venv-under-tmp", "copies-venv-under-var-tmp"])
def test_venv_of_this_interpreter(place, copies):
    python = make_venv(place / "venv", copies=copies)
    assert python.is_symlink() != copies
    assert_full_code_marks(grade_example(python, place))


@pytest.mark.skipif(not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11) or
                    subprocess.run([str(SYSTEM_PYTHON), "-c", "import venv, sys; assert sys.version_info[:2] == (3, 11)"],
                                   capture_output=True).returncode != 0,
                    reason="needs a system Python 3.11 with venv, to share this run's packages")
def test_system_python_venv_inside_a_checkout(place):
    # Debian/Ubuntu's layout: bin/python -> python3 -> /usr/bin/python3, the standard library and
    # /usr/lib/python3/dist-packages under /usr (bound), the venv in the project's checkout.
    checkout = place / "course"
    shutil.copytree(ROOT / "assignments", checkout / "assignments")
    python = make_venv(checkout / ".venv", python=str(SYSTEM_PYTHON))
    assert_full_code_marks(grade_example(python, checkout))


def test_pip_install_user(place):
    # `pip install --user`: the base interpreter (no venv) with the grader, numpy and torch in the user
    # site-packages (PYTHONUSERBASE points it at this test's folder). The worker's packages come from there.
    base = Path(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable))
    env = {**clean_env(base, place), "PYTHONUSERBASE": str(place / "userbase")}
    site = Path(subprocess.run([str(base), "-c", "import site; print(site.getusersitepackages())"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip())
    site.mkdir(parents=True)
    for entry in SITE.iterdir():
        if entry.name not in ("grader", "reference", "assignments"):
            (site / entry.name).symlink_to(entry)
    for package in ("grader", "reference", "assignments"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    script = ("from grader.sandbox.preflight import preflight\nimport grader\nr = preflight()\n"
              "print(grader.__file__, r.ok, r.isolation, r.message)")
    result = subprocess.run([str(base), "-c", script], cwd=place, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(str(site)) and " True bwrap " in result.stdout, result.stdout


def _can_add_user() -> bool:
    if os.geteuid() != 0 or not RUNUSER:
        return False
    try:
        pwd.getpwnam(NON_ROOT)
        return True
    except KeyError:
        return subprocess.run(["useradd", "-M", "-s", "/bin/sh", NON_ROOT], capture_output=True).returncode == 0


@pytest.mark.skipif(not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11), reason="needs a system Python 3.11")
@pytest.mark.parametrize("place", ["/tmp"], indirect=True)
def test_non_root_user(place):
    if not _can_add_user():
        pytest.skip("needs root and useradd to make a user")
    readable = subprocess.run(_as(NON_ROOT, ["test", "-r", str(EXAMPLE), "-a", "-r", str(SITE / "torch" / "__init__.py"),
                                             "-a", "-x", str(SYSTEM_PYTHON)]), capture_output=True)
    if readable.returncode != 0:
        pytest.skip(f"{NON_ROOT} cannot read this checkout or its packages (a home folder closed to others)")
    home = place / "home"
    home.mkdir()
    shutil.chown(home, NON_ROOT)
    place.chmod(0o755)
    python = make_venv(home / "venv", python=str(SYSTEM_PYTHON), owner=NON_ROOT)
    assert_full_code_marks(grade_example(python, home, owner=NON_ROOT))


PROBE = '''
import importlib, json, os, sys
found = {}
for name in ("reference", "grader", "assignments", "reference.vit"):
    try:
        importlib.import_module(name)
        found[name] = "imported"
    except BaseException as exc:
        found[name] = type(exc).__name__
for path in PATHS:
    try:
        with open(path) as fh:
            found[path] = "read " + fh.read(40)
    except OSError as exc:
        found[path] = type(exc).__name__
found["sys.path"] = [p for p in sys.path if os.path.isdir(os.path.join(p, "reference"))]
import sysconfig  # torch.compile builds C extensions against Python's headers
found["Python.h"] = os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
print("PROBE" + json.dumps(found))
'''


def test_nothing_of_the_grader_is_reachable_through_a_path_alias(place):
    # /home -> /data/home on clusters: the venv is reached through a symlink; the worker must not see
    # the installed reference, the grader or the rubric under the alias, the real path, or the checkout.
    real = place / "data"
    python_real = make_venv(real / "venv")
    alias = place / "home"
    alias.symlink_to(real)
    python = alias / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import reference, os; print(os.path.dirname(reference.__path__[0]))"],
                          check=True, capture_output=True, text=True, cwd=place,
                          env=clean_env(python, place)).stdout.strip()
    assert site.startswith(str(alias)) or site.startswith(str(real))
    paths = [f"{base}/{rel}" for base in (site, site.replace(str(alias), str(real)), str(ROOT))
             for rel in ("reference/vit.py", "assignments/vit_cifar10/rubric.toml", "grader/expected/model.py")]
    paths.append(f"{alias}/venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages/reference/vit.py")
    code = f"PATHS = {paths!r}\n{PROBE}"
    script = ("import sys\nfrom grader.sandbox import Sandbox\n"
              "s = Sandbox(sys.stdin.read(), isolation='bwrap')\ns.start()\ns.close()\nprint(s.output)")
    result = subprocess.run([str(python), "-c", script], input=code, cwd=place, capture_output=True, text=True, env=clean_env(python, place),
                            timeout=180)
    assert "PROBE" in result.stdout, result.stderr[-3000:]
    found = json.loads(result.stdout.split("PROBE", 1)[1].splitlines()[0])
    assert all(found[name] == "ModuleNotFoundError" for name in ("reference", "grader", "assignments", "reference.vit")), found
    assert all(found[path] in ("FileNotFoundError", "PermissionError") for path in paths), found
    assert found["sys.path"] == []
    assert found["Python.h"]
    assert python_real.exists()
