"""train.accuracy: the student's own ViT, trained by the harness in the sandbox, reaches the pass mark.

The child receives training images, training labels and test images, never test labels; it
returns test predictions and the parent computes the accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from grader.checks.context import CheckFailed, GradingContext, Outcome
from grader.sandbox import SandboxError
from grader.training.calibration import AccuracySpec, reference_accuracy
from grader.training.data import DatasetMissing, find_dataset


def resolve_mode(requested: str) -> str:
    """`auto` means full with CUDA and quick without."""
    if requested == "auto":
        return "full" if torch.cuda.is_available() else "quick"
    return requested


def spec_for(ctx: GradingContext, mode: str) -> AccuracySpec:
    if mode not in ctx.rubric.accuracy:
        raise CheckFailed(f"the rubric has no [accuracy.{mode}] section")
    return AccuracySpec.from_rubric(ctx.rubric.accuracy, mode)


def check_accuracy(ctx: GradingContext) -> Outcome:
    mode = resolve_mode(ctx.notes.get("accuracy", "auto"))
    if mode == "off":
        return Outcome.skipped("accuracy check turned off (--accuracy off)")
    device = "cuda" if mode == "full" and torch.cuda.is_available() else "cpu"
    if mode == "full" and device != "cuda":
        return Outcome.skipped("--accuracy full needs a CUDA GPU; use --accuracy quick on a CPU")
    if not ctx.expected.can_train_reference:
        return Outcome.skipped(f"the pass mark comes from training the reference solution, which the "
                               f"{ctx.expected.source} do not contain; the instructor's grading runs this check")
    try:
        dataset = find_dataset(ctx.notes.get("data_dir"))
    except DatasetMissing as missing:
        return Outcome.skipped(f"no dataset: {missing}")
    spec = spec_for(ctx, mode)
    data = dataset.subset(spec.train_images, spec.test_images)
    built = ctx.build("ViT", kwargs=spec.config)
    timeout = float(spec.recipe.get("max_seconds", 600)) * 1.5 + 120
    try:
        reply = ctx.sandbox.request("train", {"handle": built.handle, "recipe": spec.recipe, "device": device},
                                    {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test},
                                    timeout=timeout)
    except SandboxError as error:
        if error.worker_died:
            raise
        raise CheckFailed(f"training raised {error.message}") from None
    info = reply.header
    if info.get("stopped") and "time budget" not in info["stopped"]:
        return Outcome.failed(f"training stopped: {info['stopped']}", history=info.get("history", []),
                              device=info.get("device"), notes=info.get("notes", []))
    predictions = reply.arrays.get("predictions")
    if predictions is None or predictions.shape != data.y_test.shape:
        raise CheckFailed(f"training returned no prediction per test image "
                          f"({None if predictions is None else predictions.shape} for {data.y_test.shape})")
    accuracy = float(np.mean(predictions == data.y_test))
    baseline, cached = reference_accuracy(dataset, spec, device)
    threshold = max(spec.floor, baseline - spec.margin)
    attention = [reply.arrays[k] for k in sorted((k for k in reply.arrays if k.startswith("attention:")),
                                                 key=lambda k: int(k.split(":")[1]))]
    ctx.notes["training"] = {"history": info.get("history", []), "attention": attention,
                             "images": data.x_test[: len(attention[0]) if attention else 0]}
    details = {
        "accuracy": accuracy, "threshold": threshold, "reference_accuracy": baseline, "reference_cached": cached,
        "margin": spec.margin, "floor": spec.floor, "mode": mode, "epochs": info.get("epochs_run"),
        "device": info.get("device"), "precision": info.get("autocast"), "images_per_second": info.get("images_per_second"),
        "train_seconds": info.get("train_seconds"), "dataset": dataset.name, "synthetic_data": dataset.synthetic,
        "train_images": len(data.x_train), "test_images": len(data.x_test), "history": info.get("history", []),
        "compiled": info.get("compiled", False), "notes": info.get("notes", []),
    }
    data_note = " (synthetic data)" if dataset.synthetic else ""
    summary = (f"test accuracy {accuracy:.1%} vs pass mark {threshold:.1%} (reference {baseline:.1%} - margin "
               f"{spec.margin:.0%}), {mode} mode, {details['epochs']} epochs on {device}{data_note}")
    if accuracy >= threshold:
        return Outcome.passed(summary, **details)
    return Outcome.failed(f"{summary}: the model does not learn well enough", **details)
