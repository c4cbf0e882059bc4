"""CI: after the README's main job, every correct example must have passed every automatic code check.

Which examples are correct is read from assignments/vit_cifar10/examples/README.md (its table's
expected outcome says "full marks", "every automatic check passes" or "as sNNNN" of such an example). A
check id the row names in backticks is a policy deduction of correct math (s1002's Conv2d loses
`static.forbidden`): that check must fail, every other must pass.
Usage: python .ci/check_examples.py REPORTS_FOLDER
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assignments" / "vit_cifar10" / "examples"
CORRECT = re.compile(r"full marks|every automatic check passes|^as s\d{4}")
CHECK_ID = re.compile(r"`([a-z0-9_]+\.[a-z0-9_]+)`")


def correct_examples() -> dict[str, set[str]]:
    """Student ids (as the grader names them) of the examples the README calls correct, each with the checks
    its row says it loses by policy."""
    from grader.checks import CHECK_IDS
    from grader.intake.naming import student_id_from_name

    found = {}
    for line in (EXAMPLES / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`s") and CORRECT.search(cells[2]):
            policy = {check_id for check_id in CHECK_ID.findall(cells[2]) if check_id in CHECK_IDS}
            found[student_id_from_name(EXAMPLES / cells[0].strip("`/"))] = policy
    return found


def main(out: Path) -> int:
    from grader.sandbox import available_levels

    expected_isolation = available_levels()[0]
    problems = []
    students = correct_examples()
    if not students:
        problems.append("the examples README names no correct example (table changed?)")
    for student, policy in students.items():
        path = out / "students" / student / "report.json"
        if not path.is_file():
            problems.append(f"{student}: no report at {path}")
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        code = [c for c in report["checks"] if not c["id"].startswith("task") and c["status"] not in ("skipped", "manual")]
        bad = [f"{c['id']} {c['status']}: {c['message'][:200]}" for c in code
               if (c["status"] != "passed") != (c["id"] in policy)]
        isolation = report.get("sandbox", {}).get("isolation")
        if bad or not code:
            problems.append(f"{student}: " + ("; ".join(bad) or "no automatic code check ran"))
        if isolation != expected_isolation:
            problems.append(f"{student}: graded at isolation {isolation!r}, not {expected_isolation!r}")
        print(f"{student}: {len(code) - len(bad)}/{len(code)} automatic code checks as expected"
              + (f" ({', '.join(sorted(policy))} deducted by policy)" if policy else "") + f", isolation {isolation}")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
