"""The late policy of the rubric's [late] section: deadline, grace period, penalty, cap, extensions.

A penalty is a percentage of the report's `max_score` per started unit (hour or day) past the
deadline plus its grace period, capped at `cap_percent`; `policy = "not_accepted"` (or lateness
past `reject_after_hours`) takes every point. The raw `score` of report.json is left as it is; the
penalty and the final score are written beside it (`penalty`, `final_score`, `late`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LATE_KEYS = {"deadline", "timezone", "grace_minutes", "policy", "penalty_percent", "unit", "cap_percent",
             "reject_after_hours"}
Unit = Literal["hour", "day"]
UNIT_SECONDS = {"hour": 3600, "day": 86400}


class LatePolicyError(ValueError):
    """The [late] section or a times/extensions CSV is invalid; the message names where."""


@dataclass(frozen=True)
class LatePolicy:
    deadline: datetime  # time-zone aware
    grace: timedelta = timedelta(0)
    policy: Literal["penalty", "not_accepted"] = "penalty"
    penalty_percent: float = 0.0
    unit: Unit = "day"
    cap_percent: float = 100.0
    reject_after: timedelta | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> LatePolicy:
        def require(condition: bool, key: str, message: str) -> None:
            if not condition:
                raise LatePolicyError(f"{where}.{key}: {message}")

        def number(key: str, default: float) -> float:
            value = table.get(key, default)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, key,
                    f"expected a number >= 0, got {value!r}")
            return float(value)

        for key in table:
            require(key in LATE_KEYS, key, f"unknown key (allowed: {', '.join(sorted(LATE_KEYS))})")
        require("deadline" in table, "deadline", "missing (for example 2026-12-01T23:59:00+09:00)")
        zone = None
        if "timezone" in table:
            try:
                zone = ZoneInfo(str(table["timezone"]))
            except (ZoneInfoNotFoundError, ValueError):
                raise LatePolicyError(f"{where}.timezone: unknown time zone {table['timezone']!r} "
                                      "(an IANA name such as Asia/Tokyo)") from None
        deadline = parse_time(table["deadline"], zone, f"{where}.deadline")
        policy = table.get("policy", "penalty")
        require(policy in ("penalty", "not_accepted"), "policy", "must be penalty or not_accepted")
        unit = table.get("unit", "day")
        require(unit in UNIT_SECONDS, "unit", "must be hour or day")
        cap = number("cap_percent", 100.0)
        require(cap <= 100, "cap_percent", "must be at most 100")
        reject = table.get("reject_after_hours")
        return cls(deadline=deadline, grace=timedelta(minutes=number("grace_minutes", 0.0)), policy=policy,
                   penalty_percent=number("penalty_percent", 0.0), unit=unit, cap_percent=cap,
                   reject_after=None if reject is None else timedelta(hours=number("reject_after_hours", 0.0)))

    def assess(self, submitted: datetime, max_score: float, extension: timedelta = timedelta(0)) -> dict[str, Any]:
        """The `late` entry of a report submitted at `submitted` (aware) worth `max_score` points."""
        due = self.deadline + extension
        late = submitted - due
        entry: dict[str, Any] = {"submitted_at": submitted.isoformat(), "deadline": due.isoformat(),
                                 "late_seconds": max(0, int(late.total_seconds())), "penalty": 0.0,
                                 "penalty_percent": 0.0}
        if extension:
            entry["extension_hours"] = round(extension.total_seconds() / 3600, 4)
        if late <= self.grace:
            entry["reason"] = "on time" if late <= timedelta(0) else "within the grace period"
            return entry
        if self.policy == "not_accepted" or (self.reject_after is not None and late > self.reject_after):
            entry.update(penalty=max_score, penalty_percent=100.0, reason="late work is not accepted" if self.policy == "not_accepted"
                         else f"more than {self.reject_after.total_seconds() / 3600:g} h late: not accepted")
            return entry
        units = math.ceil((late - self.grace).total_seconds() / UNIT_SECONDS[self.unit])
        percent = min(self.cap_percent, units * self.penalty_percent)
        capped = percent < units * self.penalty_percent
        entry.update(penalty=round(max_score * percent / 100, 4), units_late=units, penalty_percent=percent,
                     reason=f"{units} {self.unit}{'s' if units != 1 else ''} late: -{percent:g} %"
                            + (" (capped)" if capped else ""))
        return entry


def parse_time(value: Any, zone: tzinfo | None, where: str) -> datetime:
    """A time-zone aware datetime from TOML (datetime) or text (ISO 8601); a time without an offset
    takes `zone`, and without `zone` it is an error (a deadline must say which midnight it means)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, datetime.max.time().replace(microsecond=0))
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise LatePolicyError(f"{where}: {value!r} is not an ISO 8601 time (2026-12-01T23:59:00+09:00)") from None
    if not isinstance(value, datetime):
        raise LatePolicyError(f"{where}: expected a date and time, got {value!r}")
    if value.tzinfo is None:
        if zone is None:
            raise LatePolicyError(f"{where}: {value.isoformat()} has no time zone; write it with an offset "
                                  "(+09:00) or set [late] timezone")
        value = value.replace(tzinfo=zone)
    return value


def read_times(path: Path, value_column: str) -> dict[str, str]:
    """student_id -> text of `value_column` from a CSV (submission times or extensions)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise LatePolicyError(f"{path}: cannot read ({exc.strerror})") from None
    if not rows or "student_id" not in rows[0] or value_column not in rows[0]:
        raise LatePolicyError(f"{path}: needs the columns student_id and {value_column}")
    return {row["student_id"].strip(): (row[value_column] or "").strip() for row in rows if row["student_id"]}


def submitted_times(path: Path, zone: tzinfo | None = None) -> dict[str, datetime]:
    """A --submitted CSV: student_id, submitted_at (ISO 8601, with an offset or in the deadline's time zone)."""
    return {sid: parse_time(text, zone, f"{path}: {sid}")
            for sid, text in read_times(path, "submitted_at").items() if text}


def extensions(path: Path) -> dict[str, timedelta]:
    """An extensions CSV: student_id, extension_hours (a number of hours added to the deadline)."""
    result = {}
    for sid, text in read_times(path, "extension_hours").items():
        try:
            hours = float(text)
        except ValueError:
            raise LatePolicyError(f"{path}: {sid}: extension_hours {text!r} is not a number") from None
        if hours < 0:
            raise LatePolicyError(f"{path}: {sid}: extension_hours must be >= 0")
        result[sid] = timedelta(hours=hours)
    return result


def file_time(path: Path) -> datetime:
    """The modification time of a submission (the newest file inside a folder), in UTC."""
    stamps = [path.stat().st_mtime]
    if path.is_dir():
        stamps += [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return datetime.fromtimestamp(max(stamps), tz=timezone.utc)
