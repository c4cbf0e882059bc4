"""The training recipe: every setting of the harness, its default and its check, in one frozen dataclass.

The rubric's `[accuracy.<mode>] recipe = {...}` tables become a TrainingRecipe when the rubric
loads (a bad key or type is a RubricError naming it); the trainer, the accuracy check, calibration
and the benchmark read its attributes. Like trainer.py, this file is also copied into the sandbox
(the worker rebuilds the recipe the parent sends), so it imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainingRecipe:
    """How the harness trains a model (the reference and every student's alike)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"  # one of OPTIMIZERS
    weight_decay: float | None = None  # None: the optimizer's usual value (see decay)
    momentum: float = 0.0  # SGD only
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate, in epochs
    schedule: str = "cosine"  # one of SCHEDULES, after the warm-up
    augment: bool = True  # random crop with padding and horizontal flip
    label_smoothing: float = 0.0
    val_fraction: float = 0.1  # of the training images, held out for the validation curve
    seed: int = 0
    # At least this many optimizer steps, adding epochs: on a small dataset the recipe's epochs are too few
    # steps to learn anything.
    min_steps: int = 0
    compile: bool = False  # torch.compile, falling back to eager when it fails
    compile_mode: str = "default"  # one of COMPILE_MODES
    max_seconds: float | None = None  # training stops after the epoch that passes it; None: no cap
    attention_images: int = 0  # test images whose attention maps come back for the report's picture
    cpu_bf16: bool = True  # bf16 autocast on CPUs with native bf16 units (see trainer.autocast_dtype)
    mean: tuple[float, ...] = CIFAR_MEAN  # normalisation (the handout's own loop uses 0.5 and 0.5)
    std: tuple[float, ...] = CIFAR_STD
    # The keys the rubric file set. The rubric's verdict digest and the reference's cache key hash `table()`,
    # which is that table exactly as written for an unchanged file, so neither changes with this class.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def decay(self) -> float:
        """weight_decay, or the optimizer's usual value: 0.05 for AdamW, none for SGD."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.optimizer == "sgd" else 0.05

    @classmethod
    def from_table(cls, table: Any, where: str = "recipe") -> TrainingRecipe:
        """A recipe from a rubric's table (or a Python caller's dict); ValueError naming `where.key` when a key
        is unknown, missing or of the wrong type."""
        if isinstance(table, TrainingRecipe):
            return table
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table")
        for key in table:
            if key not in SETTINGS:
                raise ValueError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(SETTINGS))})")
        for key in REQUIRED:
            if key not in table:
                raise ValueError(f"{where}.{key}: missing")
        for key, value in table.items():
            problem = _problem(key, value)
            if problem:
                raise ValueError(f"{where}.{key}: {problem}, got {value!r}")
        values = {key: tuple(value) if key in ("mean", "std") else value for key, value in table.items()}
        return cls(**values, given=frozenset(table))

    def table(self) -> dict[str, Any]:
        """The settings the rubric file gave and any changed from its default since (a copy made with
        dataclasses.replace): the recipe as a table, for digests and cache keys."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "given" and (f.name in self.given or getattr(self, f.name) != _default(f.name))}

    def settings(self) -> dict[str, Any]:
        """Every setting, defaults included (what the sandbox's trainer is sent)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


# What each setting accepts: (test, what the error says).
_RULES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "expected a whole number >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "expected a whole number >= 1"),
    "lr": (lambda v: _is_number(v) and v > 0, "expected a number > 0"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"expected one of {', '.join(OPTIMIZERS)}"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "expected a number >= 0"),
    "momentum": (lambda v: _is_number(v) and v >= 0, "expected a number >= 0"),
    "warmup_epochs": (lambda v: _is_number(v) and v >= 0, "expected a number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"expected one of {', '.join(SCHEDULES)}"),
    "augment": (lambda v: isinstance(v, bool), "expected true or false"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "expected a number from 0 to below 1"),
    "val_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "expected a number from 0 to below 1"),
    "seed": (lambda v: _is_int(v) and v >= 0, "expected a whole number >= 0"),
    "min_steps": (lambda v: _is_int(v) and v >= 0, "expected a whole number >= 0"),
    "compile": (lambda v: isinstance(v, bool), "expected true or false"),
    "compile_mode": (lambda v: v in COMPILE_MODES, f"must be one of {', '.join(COMPILE_MODES)}"),
    "max_seconds": (lambda v: _is_number(v) and v >= 0, "expected a number of seconds >= 0"),
    "attention_images": (lambda v: _is_int(v) and v >= 0, "expected a whole number >= 0"),
    "cpu_bf16": (lambda v: isinstance(v, bool), "expected true or false"),
    "mean": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)),
             "expected 3 numbers (one per colour channel)"),
    "std": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v),
            "expected 3 numbers > 0 (one per colour channel)"),
}
SETTINGS = tuple(f.name for f in fields(TrainingRecipe) if f.name != "given")
REQUIRED = ("epochs", "batch_size", "lr")
assert set(_RULES) == set(SETTINGS), "every setting has its rule"


def _problem(key: str, value: Any) -> str | None:
    test, message = _RULES[key]
    return None if test(value) else message


def _default(name: str) -> Any:
    return next(f.default for f in fields(TrainingRecipe) if f.name == name)
