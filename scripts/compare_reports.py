"""Compare two graded output folders report by report, leaving out what differs between any two runs.

    python scripts/compare_reports.py OUT_BEFORE OUT_AFTER

For refactors that must not change behaviour: grade the same submissions before and after (with the same
`--challenge-seed`, so both runs draw the same inputs) and compare. Left out: timings, the environment, the
submission's absolute path and a check's `duration`/`seconds` details. Exit 1 and a line per difference when
any other field of any report differs, or a student is in one folder only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUN_SPECIFIC = {"timings", "environment", "submission", "grader_version"}
DETAIL_TIMES = {"duration", "seconds", "elapsed", "wall_s", "cpu_s"}


def comparable(report: dict) -> dict:
    kept = {k: v for k, v in report.items() if k not in RUN_SPECIFIC}
    for check in kept.get("checks", []):
        details = check.get("details") or {}
        check["details"] = {k: v for k, v in details.items() if k not in DETAIL_TIMES}
    return kept


def reports(out: Path) -> dict[str, dict]:
    return {path.parent.relative_to(out).as_posix(): comparable(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(out.rglob("report.json"))}


def differences(before: dict, after: dict, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            found += differences(before.get(key, "<absent>"), after.get(key, "<absent>"), f"{where}.{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    before, after = (reports(Path(a)) for a in argv)
    found = [f"{student}: only in {argv[0] if student in before else argv[1]}"
             for student in sorted(set(before) ^ set(after))]
    for student in sorted(set(before) & set(after)):
        found += [f"{student}{d}" for d in differences(before[student], after[student])]
    for line in found:
        print(line)
    print(f"{len(set(before) & set(after))} reports compared, {len(found)} differences")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
