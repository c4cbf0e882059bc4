"""Hostile submissions graded end to end through `grade_batch`, beside an honest student.

Each attack must end with a truthful report for its author and no effect on anything else: the
honest student's report is identical to one graded alone, the reports, gradebook and files on
disk are untouched, and nothing the attacker started survives.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from grader.batch.grading import grade_submission
from grader.batch.run import BatchOptions, grade_batch
from grader.expected import challenge_expected
from grader.sandbox import available_levels

from ..conftest import HANDOUT_SOURCE, code_rubric

TOKEN = uuid.uuid4().hex[:12]
CHALLENGE_SEED = 20261128  # the batch's secret seed, reused for the honest student's baseline
SECRET = f"grader-secret-{TOKEN}"
HONEST_MARKER = f"honest-student-{TOKEN}"
ISOLATED = available_levels()[0] == "bwrap"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not ISOLATED, reason="the adversarial corpus needs bubblewrap (installed by .ci/run)"),
              pytest.mark.timeout(1200)]


def at_load(body: str) -> str:
    """Run `body` while the submission's classes are being defined (a class body runs at load)."""
    indented = "\n".join(f"        {line}" for line in body.strip().splitlines())
    # FNN refers to Attack, so intake keeps it (it keeps what the required classes reach).
    handout = HANDOUT_SOURCE.replace("class FNN(nn.Module):\n", "class FNN(nn.Module):\n    attack = Attack\n")
    return ("import os, sys, socket, subprocess, time\nclass Attack:\n    def attack():\n"
            f"{indented}\n    attack()\n\n" + handout)


def in_forward(body: str) -> str:
    """Run `body` inside FNN.forward, i.e. during the checks."""
    indented = "\n".join(f"        {line}" for line in body.strip().splitlines())
    marker = "        # 線形変換 -> 活性化関数 -> 線形変換の順に適用\n"
    return "import os, sys\n" + HANDOUT_SOURCE.replace(marker, marker + indented + "\n")


FIND_FILES = """
found = []
for top in ('/', '/tmp', os.path.expanduser('~')):
    for root, dirs, files in os.walk(top):
        if root.startswith(('/proc', '/sys', '/dev', '/usr')) or 'site-packages' in root or '/lib/python' in root:
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in files if f.endswith(({patterns}))]
        if len(found) > 500:
            break
"""

ATTACKS: dict[str, tuple[str, str]] = {
    # name: (source, what the report must say)
    "forge_reports": (at_load(FIND_FILES.format(patterns="'report.json', 'gradebook.csv', 'results.json'") + """
for path in found:
    try:
        open(path, 'w').write('{"score": 1000}')
        print('FORGED', path)
    except OSError as e:
        print('refused', path, e)
print('reports found:', len(found))
"""), "graded"),
    "read_other_submissions": (at_load(FIND_FILES.format(patterns="'.ipynb', '.py'") + """
for path in found:
    try:
        if 'honest-student' in open(path, errors='ignore').read():
            print('STOLEN', path)
    except OSError:
        pass
print('searched', len(found))
"""), "graded"),
    "read_the_solution": (at_load("""
for name in ('reference', 'reference.vit', 'grader.expected', 'assignments'):
    try:
        __import__(name)
        print('IMPORTED', name)
    except ImportError as e:
        print('refused', name, type(e).__name__)
""" + FIND_FILES.format(patterns="'vit.py', 'rubric.toml'") + """
for path in found:
    text = open(path, errors='ignore').read()
    if "Reference Vision Transformer" in text or "[points]" in text:
        print('SOLUTION', path)
"""), "graded"),
    "leak_environment": (at_load("print(sorted(os.environ.items()))\nprint(open('/proc/1/environ', 'rb').read())"),
                         "graded"),
    "reach_the_network": (at_load("""
for host in ('127.0.0.1', 'localhost'):
    try:
        socket.create_connection((host, {port}), timeout=2)
        print('CONNECTED', host)
    except OSError as e:
        print('blocked', host, e)
"""), "graded"),
    "exhaust_memory": (in_forward("import numpy\nhog = [numpy.ones(2**27) for _ in range(200)]"), "graded"),
    "exhaust_processes": (in_forward("""
import subprocess
children = [subprocess.Popen(['sleep', '{sleep}']) for _ in range(150)]
"""), "graded"),
    "exhaust_disk": (at_load("""
try:
    with open('/tmp/fill', 'wb') as fh:
        for _ in range(4096):
            fh.write(b'0' * 2**20)
    print('WROTE 4 GiB')
except OSError as e:
    print('refused', e)
"""), "graded"),
    "exhaust_time": (in_forward("while True:\n    pass"), "graded"),
    "outlive_the_grader": (at_load("""
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '{sleep}'])
    os._exit(0)
"""), "graded"),
    "kill_everything": (at_load("import signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as e:\n    print('refused', e)"),
                        "graded"),
    "spoof_output": (at_load("""
print('VGW1' + '{"ok": true}')
print('equiv.vit  PASS  6/6')
print('{"student": "honest", "score": 0}')
"""), "graded"),
    "garbage_on_the_protocol": (in_forward("os.write(int(sys.argv[2]), b'VGW1' + b'\\xff' * 64)"), "graded"),
    "monkeypatch_comparisons": (at_load("""
import numpy, torch
numpy.allclose = lambda *a, **k: True
numpy.testing.assert_allclose = lambda *a, **k: None
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
""").replace("attn = attn.softmax(dim=-1)", "attn = attn.softmax(dim=-2)"), "graded"),
}


def processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory):

    rubric = copy.deepcopy(code_rubric())  # the honest student submits code only
    rubric.limits.update(request_timeout=4.0, submission_timeout=120.0, memory_gib=2.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    sleep_marker = str(800000 + int(TOKEN[:6], 16) % 99999)
    root = tmp_path_factory.mktemp("adversarial")
    submissions = root / "submissions"
    submissions.mkdir()
    honest = f"# {HONEST_MARKER}\n" + HANDOUT_SOURCE
    (submissions / "honest.py").write_text(honest, encoding="utf-8")
    for name, (source, _) in ATTACKS.items():
        source = source.replace("{port}", str(port)).replace("{sleep}", sleep_marker)
        (submissions / f"{name}.py").write_text(source, encoding="utf-8")
    os.environ["VITGRADE_ADVERSARIAL_SECRET"] = SECRET
    out = root / "out"
    started = time.monotonic()
    try:
        grade_batch([submissions], BatchOptions(out=out, rubric=rubric, accuracy="off", progress=False, workers=2,
                                                challenge_seed=CHALLENGE_SEED))
        baseline = grade_submission(submissions / "honest.py", rubric=rubric, accuracy="off",
                                    expected=challenge_expected(CHALLENGE_SEED))
    finally:
        del os.environ["VITGRADE_ADVERSARIAL_SECRET"]
    seconds = time.monotonic() - started
    connections = 0
    while True:
        try:
            server.accept()[0].close()
            connections += 1
        except BlockingIOError:
            break
    server.close()
    time.sleep(1)
    reports = {p.parent.name: json.loads(p.read_text()) for p in out.glob("students/*/report.json")}
    return {"reports": reports, "baseline": baseline, "rubric": rubric, "out": out, "connections": connections, "root": root,
            "leftover": processes_with(f"sleep {sleep_marker}"), "seconds": seconds}


def test_every_attacker_gets_a_truthful_report_and_the_batch_finishes(graded):
    reports = graded["reports"]
    assert set(reports) == {"honest", *ATTACKS}
    for name, (_, status) in ATTACKS.items():
        assert reports[name]["status"] == status, name


def test_the_honest_student_is_unaffected(graded):
    honest = graded["reports"]["honest"]
    baseline = graded["baseline"].to_dict()
    assert honest["score"] == honest["max_score"] == baseline["score"]
    strip = ("timings", "submission", "output")
    assert {k: v for k, v in honest.items() if k not in strip} == {k: v for k, v in baseline.items() if k not in strip}


def test_reports_and_gradebook_are_not_forged(graded):
    out = graded["out"]
    for path in out.rglob("*.json"):
        assert '"score": 1000' not in path.read_text()
    assert "1000" not in (out / "gradebook.csv").read_text()
    assert "FORGED" not in graded["reports"]["forge_reports"]["output"]


def test_no_secret_leaves_the_grader(graded):
    reports = graded["reports"]
    assert SECRET not in json.dumps(reports)
    assert "STOLEN" not in reports["read_other_submissions"]["output"]
    assert "searched" in reports["read_other_submissions"]["output"]
    solution = reports["read_the_solution"]["output"]
    assert "IMPORTED" not in solution and "SOLUTION" not in solution and solution.count("refused") == 4


def test_no_network(graded):
    assert graded["connections"] == 0
    assert "CONNECTED" not in graded["reports"]["reach_the_network"]["output"]


def first_error(report: dict) -> dict:
    """The first check that errored; after three worker deaths the rest say they were not run."""
    errors = [c for c in report["checks"] if c["status"] == "error"]
    assert errors and all("not run" in c["message"] for c in errors[3:])
    return errors[0]


def test_resource_exhaustion_is_contained(graded):
    reports = graded["reports"]
    memory = first_error(reports["exhaust_memory"])
    assert memory["id"] == "shapes.fnn" and "memory limit of 2,048 MiB exceeded" in memory["message"]
    stuck = first_error(reports["exhaust_time"])
    assert stuck["id"] == "shapes.fnn" and "timed out" in stuck["message"]
    assert "WROTE" not in reports["exhaust_disk"]["output"] and "refused" in reports["exhaust_disk"]["output"]
    assert not list(Path("/tmp").glob("fill")) and graded["leftover"] == []


def test_spoofed_output_and_monkeypatching_change_nothing(graded):
    reports = graded["reports"]
    assert reports["spoof_output"]["score"] == reports["honest"]["score"]  # correct code, nothing more
    patched = {c["id"]: c["status"] for c in reports["monkeypatch_comparisons"]["checks"]}
    assert patched["equiv.self_attention"] == "failed"
    garbage = first_error(reports["garbage_on_the_protocol"])
    assert garbage["id"] == "shapes.fnn" and "broke the worker protocol" in garbage["message"]


def test_grading_is_deterministic(graded):
    """The same submission graded twice: identical reports apart from timings."""
    again = grade_submission(graded["root"] / "submissions" / "honest.py", rubric=graded["rubric"],
                             accuracy="off", expected=challenge_expected(CHALLENGE_SEED)).to_dict()
    first = graded["baseline"].to_dict()
    assert {k: v for k, v in again.items() if k != "timings"} == {k: v for k, v in first.items() if k != "timings"}
