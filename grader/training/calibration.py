"""The accuracy pass mark, relative to the reference trained with the same recipe on the same data."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import numpy as np
import torch

from grader.training.data import Dataset
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
    recipe: dict

    @classmethod
    def from_rubric(cls, accuracy: dict, mode: str) -> AccuracySpec:
        """The spec of one mode from a validated rubric's [accuracy] table; KeyError if it has none."""
        section = accuracy[mode]
        return cls(mode=mode, config=dict(section.get("config", {})), train_images=section.get("train_images"),
                   test_images=section.get("test_images"), margin=float(section["margin"]),
                   floor=float(section.get("floor", 0.0)), recipe=dict(section["recipe"]))

    def key(self, dataset: Dataset, device: str) -> str:
        precision = str(autocast_dtype(torch.device(device), bool(self.recipe.get("cpu_bf16", True))))
        blob = json.dumps([dataset.digest, self.config, self.train_images, self.test_images, self.recipe,
                           torch.device(device).type, precision], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vitgrade" / "reference_accuracy.json"


def train_reference(dataset: Dataset, spec: AccuracySpec, device: str, seed: int, progress: bool = False) -> float:
    from reference.vit import ViT

    torch.manual_seed(seed)
    data = dataset.subset(spec.train_images, spec.test_images)
    model = ViT(**spec.config)
    outcome = train_and_predict(model, {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test},
                                {**spec.recipe, "seed": seed}, device=device, progress=progress)
    return float(np.mean(outcome.arrays["predictions"] == data.y_test))


def reference_accuracy(dataset: Dataset, spec: AccuracySpec, device: str,
                       progress: bool = False) -> tuple[float, bool]:
    """(accuracy, from_cache): measured once per dataset, recipe and device type, then cached."""
    path = cache_file()
    key = spec.key(dataset, device)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return float(cached[key]["accuracy"]), True
    accuracy = train_reference(dataset, spec, device, seed=int(spec.recipe.get("seed", 0)), progress=progress)
    cached[key] = {"accuracy": accuracy, "mode": spec.mode, "dataset": dataset.name, "device": device}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=2))
    os.replace(tmp, path)
    return accuracy, False


def calibrate(dataset: Dataset, spec: AccuracySpec, device: str, seeds: int, progress: bool = False) -> dict:
    """Train the reference with `seeds` seeds (from the recipe's own); the margin a correct model passes with
    every time. The recipe's seed is the one grading compares against: its accuracy is cached for grading."""
    first = int(spec.recipe.get("seed", 0))
    baseline, _ = reference_accuracy(dataset, spec, device, progress)
    accuracies = [baseline] + [train_reference(dataset, spec, device, first + i, progress) for i in range(1, seeds)]
    spread = max(accuracies) - min(accuracies)
    # The pass mark is baseline - margin: a correct model must clear it on every seed, with room
    # for the seed-to-seed spread seen here once more.
    margin = round(max(0.02, (baseline - min(accuracies)) + spread), 3)
    return {"accuracies": accuracies, "mean": mean(accuracies), "spread": spread, "baseline_seed": first,
            "suggested_margin": margin}


def write_margin(rubric: Path, out: Path, mode: str, margin: float) -> None:
    """Write `rubric` to `out` (which may be the same file) with [accuracy.<mode>] margin set, comments kept."""
    import tomlkit

    from grader.report import write_atomic

    document = tomlkit.parse(rubric.read_text(encoding="utf-8"))
    document["accuracy"][mode]["margin"] = margin
    write_atomic(out, tomlkit.dumps(document))
