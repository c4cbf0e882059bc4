"""The accuracy pass mark, relative to the reference trained with the same recipe on the same data."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import mean

import numpy as np
import torch

from grader.training.data import Dataset
from grader.training.recipe import TrainingRecipe
from grader.training.trainer import autocast_dtype, train_and_predict


@dataclass(frozen=True)
class AccuracySpec:
    """One accuracy mode from the rubric (quick or full)."""

    mode: str
    config: dict
    train_images: int | None
    test_images: int | None
    margin: float
    floor: float
    recipe: TrainingRecipe
    min_lead: float = 0.05

    @classmethod
    def from_rubric(cls, accuracy: dict, mode: str) -> AccuracySpec:
        """The spec of one mode from a validated rubric's [accuracy] table; KeyError if it has none."""
        section = accuracy[mode]
        return cls(mode=mode, config=dict(section.get("config", {})), train_images=section.get("train_images"),
                   test_images=section.get("test_images"), margin=float(section["margin"]),
                   floor=float(section.get("floor", 0.0)), recipe=section["recipe"],
                   min_lead=float(section.get("min_lead", 0.05)))

    def with_margin(self, margin: float) -> AccuracySpec:
        return replace(self, margin=margin)

    def key(self, dataset: Dataset, device: str) -> str:
        precision = str(autocast_dtype(torch.device(device), self.recipe.cpu_bf16))
        # The recipe as its table (recipe.table), so the cached runs of an unchanged rubric stay found.
        blob = json.dumps([dataset.digest, self.config, self.train_images, self.test_images, self.recipe.table(),
                           torch.device(device).type, precision], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vitgrade" / "reference_accuracy.json"


@dataclass(frozen=True)
class ReferenceRun:
    """The reference trained with one recipe on one dataset: the pass mark's basis."""

    accuracy: float
    epochs: int
    seconds: float
    stopped: str = ""  # why training ended early (the time cap), "" when it ran every epoch
    cached: bool = False


def chance_rate(labels: np.ndarray) -> float:
    """The accuracy of always answering the most common class: the best a model whose output
    does not depend on its input can expect."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


def no_verdict(run: ReferenceRun, chance: float, spec: AccuracySpec) -> str | None:
    """Why the reference's run cannot set a pass mark, or None when it can.

    A run cut short by its time cap measured the machine's load, not the recipe; a pass mark
    (reference - margin) less than `min_lead` above chance cannot tell a model that learns from one
    that does not. Either way a student's result would be no verdict on the student.
    """
    if run.stopped:
        return (f"the reference training was cut short ({run.stopped}), so its accuracy ({run.accuracy:.1%}) "
                f"measures this machine's load rather than the recipe; grade on a quiet machine or raise the "
                f"recipe's max_seconds")
    relative = run.accuracy - spec.margin
    if relative < chance + spec.min_lead:
        return (f"the reference itself reaches only {run.accuracy:.1%} with the {spec.mode} recipe on this data "
                f"(chance: {chance:.1%}, the most common test class), so its pass mark {relative:.1%} (reference - "
                f"margin {spec.margin:.0%}) is not {spec.min_lead:.0%} above chance and cannot tell a model that "
                f"learns from one that does not; change the recipe or the data (`vitgrade calibrate` checks them)")
    return None


def train_reference(dataset: Dataset, spec: AccuracySpec, device: str, seed: int, progress: bool = False) -> ReferenceRun:
    from reference.vit import ViT

    torch.manual_seed(seed)
    data = dataset.subset(spec.train_images, spec.test_images)
    model = ViT(**spec.config)
    outcome = train_and_predict(model, {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test},
                                replace(spec.recipe, seed=seed), device=device, progress=progress)
    header = outcome.header
    return ReferenceRun(float(np.mean(outcome.arrays["predictions"] == data.y_test)), header["epochs_run"],
                        header["train_seconds"], header["stopped"])


# Runs that may not be cached (cut short by the time cap) are kept for this process only, so a
# batch does not train the reference again for every student; one lock, so it trains once.
_UNCACHED: dict[str, ReferenceRun] = {}
_LOCK = threading.Lock()


def reference_run(dataset: Dataset, spec: AccuracySpec, device: str, progress: bool = False) -> ReferenceRun:
    """The reference's run for this dataset, recipe and device type: from the cache, or trained now
    and cached unless it was cut short (a capped run says how busy the machine was, not what the
    recipe reaches, and would become every later student's pass mark)."""
    path = cache_file()
    key = spec.key(dataset, device)
    with _LOCK:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        entry = cached.get(key)
        if isinstance(entry, dict) and "accuracy" in entry:
            return ReferenceRun(float(entry["accuracy"]), int(entry.get("epochs", 0)),
                                float(entry.get("train_seconds", 0.0)), cached=True)
        if key in _UNCACHED:
            return _UNCACHED[key]
        run = train_reference(dataset, spec, device, seed=spec.recipe.seed, progress=progress)
        if run.stopped:
            _UNCACHED[key] = run
            return run
        cached[key] = {"accuracy": run.accuracy, "mode": spec.mode, "dataset": dataset.name, "device": device,
                       "epochs": run.epochs, "train_seconds": round(run.seconds, 1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=2))
        os.replace(tmp, path)
        return run


class RecipeRefused(Exception):
    """`calibrate` will not suggest a margin for a recipe whose reference cannot set a pass mark."""


def calibrate(dataset: Dataset, spec: AccuracySpec, device: str, seeds: int, progress: bool = False) -> dict:
    """Train the reference with `seeds` seeds (from the recipe's own); the margin a correct model passes with
    every time. The recipe's seed is the one grading compares against: its accuracy is cached for grading.
    Raises RecipeRefused when a run was cut short or the reference does not clear chance by far enough."""
    first = spec.recipe.seed
    chance = chance_rate(dataset.subset(spec.train_images, spec.test_images).y_test)
    baseline = reference_run(dataset, spec, device, progress)
    runs = [baseline] + [train_reference(dataset, spec, device, first + i, progress) for i in range(1, seeds)]
    accuracies = [run.accuracy for run in runs]
    spread = max(accuracies) - min(accuracies)
    # The pass mark is baseline - margin: a correct model must clear it on every seed, with room
    # for the seed-to-seed spread seen here once more.
    margin = round(max(0.02, (baseline.accuracy - min(accuracies)) + spread), 3)
    # Judged with the suggested margin: the one a correct model needs on this recipe and data.
    problem = next(filter(None, (no_verdict(run, chance, spec.with_margin(margin)) for run in runs)), None)
    if problem:
        raise RecipeRefused(f"{problem} (accuracies by seed: {', '.join(f'{a:.1%}' for a in accuracies)})")
    return {"accuracies": accuracies, "mean": mean(accuracies), "spread": spread, "baseline_seed": first,
            "chance": chance, "suggested_margin": margin}


def write_margin(rubric: Path, out: Path, mode: str, margin: float) -> None:
    """Write `rubric` to `out` (which may be the same file) with [accuracy.<mode>] margin set, comments kept."""
    import tomlkit

    from grader.report import write_atomic

    document = tomlkit.parse(rubric.read_text(encoding="utf-8"))
    document["accuracy"][mode]["margin"] = margin
    write_atomic(out, tomlkit.dumps(document))
