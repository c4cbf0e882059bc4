"""Load and validate the rubric (points per check, tolerances, forbidden APIs, limits)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assignments import assignment_dir
from grader.rubric.late import LatePolicy, LatePolicyError
from grader.spec import CHECK_IDS
from grader.training.recipe import TrainingRecipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RUBRIC = assignment_dir() / "rubric.toml"
SECTIONS = {"meta", "points", "tolerances", "forbidden", "limits", "accuracy", "tasks", "visibility", "late"}
# Who sees a check's result: everyone, students only once the deadline passed, or the instructor only.
# The names are Gradescope's (results.json "visibility").
VISIBILITIES = ("visible", "after_due_date", "hidden")


class RubricError(ValueError):
    """The rubric file is invalid; the message names the file and the bad key."""


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


@dataclass
class Rubric:
    path: Path
    points: dict[str, float]
    tolerances: dict[str, Tolerance]
    forbidden_modules: list[str]
    forbidden_apis: list[str]
    limits: dict[str, float]
    accuracy: dict[str, Any] = field(default_factory=dict)  # mode -> its table; "recipe" is a TrainingRecipe
    tasks: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # [meta]: name, version, instructor_only (see below)
    visibility: dict[str, str] = field(default_factory=dict)  # check id -> one of VISIBILITIES; default visible
    late: LatePolicy | None = None  # the [late] section; None: no deadline
    # Code that can reach an API without naming it (exec, computed getattr, introspection): see checks/static.py.
    forbidden_dynamic_code: bool = True

    def enabled(self, check_id: str) -> bool:
        return check_id in self.points

    @property
    def verdict_digest(self) -> str:
        """Every setting that can change a check's verdict, and which checks run; not points, comments or
        [meta]. A report whose verdict digest still matches needs no sandbox run, only rescoring."""
        return _digest({"checks": sorted(self.points), "tolerances": {k: asdict(v) for k, v in self.tolerances.items()},
                        "forbidden": [self.forbidden_modules, self.forbidden_apis, self.forbidden_dynamic_code], "limits": self.limits,
                        "accuracy": {mode: {**spec, "recipe": spec["recipe"].table()} for mode, spec in self.accuracy.items()},
                        "tasks": self.tasks})

    @property
    def points_digest(self) -> str:
        """The points of each check and the late policy: a change re-scores the stored reports."""
        return _digest({"points": self.points, "late": asdict(self.late) if self.late else None})

    def visibility_of(self, check_id: str) -> str:
        return self.visibility.get(check_id, "visible")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise RubricError(f"{where}: {message}")


def _number(value: Any, where: str, minimum: float = 0.0) -> float:
    _require(isinstance(value, (int, float)) and not isinstance(value, bool), where, f"expected a number, got {value!r}")
    _require(value >= minimum, where, f"must be >= {minimum}, got {value}")
    return float(value)


def _strings(value: Any, where: str) -> list[str]:
    _require(isinstance(value, list) and all(isinstance(v, str) for v in value), where, "expected a list of strings")
    return list(value)


ACCURACY_KEYS = {"config", "train_images", "test_images", "margin", "floor", "min_lead", "recipe"}
CONFIG_KEYS = {"num_classes", "img_size", "patch_size", "dim_hidden", "num_heads", "dim_feedforward", "num_layers"}


def _vit_config(table: Any, where: str) -> None:
    """A table of ViT constructor arguments, each a positive number."""
    _require(isinstance(table, dict), where, "expected a table of ViT constructor arguments")
    for key, value in table.items():
        _require(key in CONFIG_KEYS, f"{where}.{key}", "not a ViT constructor argument")
        _number(value, f"{where}.{key}", minimum=1)


def _accuracy_mode(spec: Any, where: str) -> dict[str, Any]:
    _require(where.rsplit(".", 1)[-1] in ("quick", "full"), where, "unknown accuracy mode (allowed: quick, full)")
    _require(isinstance(spec, dict), where, "expected a table")
    for key in spec:
        _require(key in ACCURACY_KEYS, f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(ACCURACY_KEYS))})")
    for key in ("margin", "recipe"):
        _require(key in spec, f"{where}.{key}", "missing")
    _number(spec["margin"], f"{where}.margin")
    _number(spec.get("floor", 0.0), f"{where}.floor")
    _number(spec.get("min_lead", 0.05), f"{where}.min_lead")
    for key in ("train_images", "test_images"):
        if key in spec:
            _number(spec[key], f"{where}.{key}", minimum=1)
    _vit_config(spec.get("config", {}), f"{where}.config")
    try:
        recipe = TrainingRecipe.from_table(spec["recipe"], f"{where}.recipe")
    except ValueError as exc:
        raise RubricError(str(exc)) from None
    return {**spec, "recipe": recipe}


TASK2_CHOICES = {"output": ("Q", "K", "V"), "role_of_the_other_two": ("a", "b", "c")}


def _tasks(spec: Any, where: str) -> dict[str, Any]:
    """[tasks]: task1_second (the second configuration of 課題1) and task2_key (the multiple-choice key)."""
    _require(isinstance(spec, dict), where, "expected a table")
    for key in spec:
        _require(key in ("task1_second", "task2_key"), f"{where}.{key}", "unknown key (allowed: task1_second, task2_key)")
    second = spec.get("task1_second", {})
    _vit_config(second, f"{where}.task1_second")
    if second:
        _require(second.get("img_size", 32) % second.get("patch_size", 4) == 0, f"{where}.task1_second",
                 "img_size must be a multiple of patch_size")
    key = spec.get("task2_key", {})
    _require(isinstance(key, dict), f"{where}.task2_key", "expected a table")
    for question, answer in key.items():
        _require(question in TASK2_CHOICES, f"{where}.task2_key.{question}",
                 f"unknown question (allowed: {', '.join(TASK2_CHOICES)})")
        _require(answer in TASK2_CHOICES[question], f"{where}.task2_key.{question}",
                 f"must be one of {', '.join(TASK2_CHOICES[question])}")
    return dict(spec)


LIMITS = {"request_timeout": 60.0, "submission_timeout": 600.0, "memory_gib": 6.0}  # defaults of [limits]


def load_rubric(path: str | Path | None = None, known_checks: set[str] | None = None) -> Rubric:
    """Read a rubric TOML file; raise RubricError naming the first bad key."""
    path = Path(path) if path else DEFAULT_RUBRIC
    try:
        raw_bytes = path.read_bytes()
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except OSError as exc:
        raise RubricError(f"{path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RubricError(f"{path}: not valid TOML ({exc})") from None
    for key in data:
        _require(key in SECTIONS, f"{path}: [{key}]", f"unknown section (allowed: {', '.join(sorted(SECTIONS))})")
    if known_checks is None:
        known_checks = set(CHECK_IDS)
    points = {}
    for check_id, value in data.get("points", {}).items():
        _require(check_id in known_checks, f"{path}: points.{check_id!r}", "unknown check id")
        points[check_id] = _number(value, f"{path}: points.{check_id!r}")
    _require(bool(points), f"{path}: [points]", "no check has points, so nothing would run")
    tolerances = {}
    for precision, spec in data.get("tolerances", {}).items():
        where = f"{path}: tolerances.{precision}"
        _require(precision in ("float64", "float32"), where, "unknown precision (allowed: float64, float32)")
        _require(isinstance(spec, dict) and set(spec) == {"rtol", "atol"}, where, "expected { rtol = ..., atol = ... }")
        tolerances[precision] = Tolerance(_number(spec["rtol"], f"{where}.rtol"), _number(spec["atol"], f"{where}.atol"))
    for precision in ("float64", "float32"):
        _require(precision in tolerances, f"{path}: tolerances.{precision}", "missing")
    forbidden = data.get("forbidden", {})
    for key in forbidden:
        _require(key in ("modules", "apis", "dynamic_code"), f"{path}: forbidden.{key}",
                 "unknown key (allowed: modules, apis, dynamic_code)")
    dynamic_code = forbidden.get("dynamic_code", True)
    _require(isinstance(dynamic_code, bool), f"{path}: forbidden.dynamic_code", "expected true or false")
    accuracy = {mode: _accuracy_mode(spec, f"{path}: accuracy.{mode}") for mode, spec in data.get("accuracy", {}).items()}
    tasks = _tasks(data.get("tasks", {}), f"{path}: tasks")
    visibility = {}
    for check_id, value in data.get("visibility", {}).items():
        where = f"{path}: visibility.{check_id!r}"
        _require(check_id in points, where, "not a check of [points]")
        _require(value in VISIBILITIES, where, f"must be one of {', '.join(VISIBILITIES)}")
        visibility[check_id] = value
    late = None
    if "late" in data:
        _require(isinstance(data["late"], dict), f"{path}: [late]", "expected a table")
        try:
            late = LatePolicy.from_table(data["late"], f"{path}: late")
        except LatePolicyError as exc:
            raise RubricError(str(exc)) from None
    _require(late is not None or "after_due_date" not in visibility.values(), f"{path}: [visibility]",
             "after_due_date needs a deadline ([late] deadline = ...)")
    limits = {}
    for key, value in data.get("limits", {}).items():
        _require(key in ("request_timeout", "submission_timeout", "memory_gib"), f"{path}: limits.{key}", "unknown key")
        limits[key] = _number(value, f"{path}: limits.{key}", minimum=1e-3)
    return Rubric(
        path=path,
        points=points,
        tolerances=tolerances,
        forbidden_modules=_strings(forbidden.get("modules", []), f"{path}: forbidden.modules"),
        forbidden_apis=_strings(forbidden.get("apis", []), f"{path}: forbidden.apis"),
        limits={**LIMITS, **limits},
        accuracy=accuracy,
        tasks=tasks,
        digest=hashlib.sha256(raw_bytes).hexdigest(),
        meta=_meta(data.get("meta", {}), f"{path}: meta"),
        visibility=visibility,
        late=late,
        forbidden_dynamic_code=dynamic_code,
    )


def _meta(meta: Any, where: str) -> dict[str, Any]:
    """[meta]; `instructor_only` (written by the student bundle) names the checks a student's rubric leaves out
    with their points, so a self-check can say what the instructor grades later and what the total is."""
    _require(isinstance(meta, dict), where, "expected a table")
    instructor_only = meta.get("instructor_only", {})
    _require(isinstance(instructor_only, dict), f"{where}.instructor_only", "expected a table of points")
    for check_id, points in instructor_only.items():
        _number(points, f"{where}.instructor_only.{check_id!r}")
    return dict(meta)


def instructor_only(rubric: Rubric) -> dict[str, float]:
    return {check_id: float(points) for check_id, points in rubric.meta.get("instructor_only", {}).items()}
