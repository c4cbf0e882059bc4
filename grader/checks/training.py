"""train.accuracy: the student's own ViT, trained by the harness in the sandbox, reaches the pass mark.

The child receives training images, training labels and test images, never test labels. It
returns its test predictions and its trained weights. Where the student's ViT maps onto the
reference (checked by running the student's class with the trained weights), the parent computes
the test accuracy itself with the reference implementation; elsewhere it uses the student's
predictions once they are shown to come from the trained weights. The pass mark comes from the
reference trained before any student code ran; when the reference cannot set one on the data and
recipe in use, the check is the grader's error, not the student's.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from grader.checks.context import Built, CheckFailed, GradingContext, Outcome, TrainingPictures
from grader.checks.mapping import MappingError
from grader.checks.trained import find_mapping, vit_recipes
from grader.expected import Expected, default_expected
from grader.options import RunOptions
from grader.rubric import Rubric
from grader.sandbox import SandboxError
from grader.spec import ViTConfig
from grader.training.calibration import AccuracySpec, ReferenceRun, chance_rate, no_verdict, reference_run
from grader.training.data import Dataset, DatasetMissing, find_dataset
from grader.training.trainer import DeviceData, autocast_dtype, predict

CHALLENGE_IMAGES = 512  # test images the trained model is run on again, outside the training request
MAPPING_PROBE = 32  # of which the first few pick the weight mapping (a reference forward per candidate)
MIN_AGREEMENT = 0.9  # share of those on which the trained weights must give the predictions training returned
# How long the parent waits for a training without a time cap (recipe max_seconds unset), before the margin below.
UNCAPPED_TRAINING_WAIT = 600


def _cuda_missing(options: RunOptions) -> bool:
    """Whether training is meant for a GPU this machine lacks (the machine that trains decides, not the
    one that resolved the options: a cluster's driver may have none)."""
    return options.device == "cuda" and not torch.cuda.is_available()


def spec_for(ctx: GradingContext, mode: str) -> AccuracySpec:
    if mode not in ctx.rubric.accuracy:
        raise CheckFailed(f"the rubric has no [accuracy.{mode}] section")
    return AccuracySpec.from_rubric(ctx.rubric.accuracy, mode)


def prepare_reference(rubric: Rubric, options: RunOptions, expected: Expected | None = None,
                      progress: bool = False) -> ReferenceRun | None:
    """Train (or find cached) the reference's run that train.accuracy will compare with, before any
    student code runs: a submission's leftover processes must not slow the run that sets the pass mark.
    None when the accuracy check will not train (off, no data, no CUDA for full, no reference)."""
    mode = options.accuracy
    if not rubric.enabled("train.accuracy") or mode not in rubric.accuracy:
        return None
    if _cuda_missing(options) or not (expected or default_expected()).can_train_reference:
        return None
    try:
        dataset = find_dataset(options.data_dir)
    except DatasetMissing:
        return None
    return reference_run(dataset, AccuracySpec.from_rubric(rubric.accuracy, mode), options.device, progress=progress)


def check_accuracy(ctx: GradingContext) -> Outcome:
    mode, device = ctx.options.accuracy, ctx.options.device
    if mode == "off":
        return Outcome.skipped("accuracy check turned off (--accuracy off)")
    if _cuda_missing(ctx.options):
        return Outcome.skipped("--accuracy full needs a CUDA GPU; use --accuracy quick on a CPU")
    if not ctx.expected.can_train_reference:
        return Outcome.skipped(f"the pass mark comes from training the reference solution, which the "
                               f"{ctx.expected.source} do not contain; the instructor's grading runs this check")
    try:
        dataset = find_dataset(ctx.options.data_dir)
    except DatasetMissing as missing:
        return Outcome.skipped(f"no dataset: {missing}")
    spec = spec_for(ctx, mode)
    data = dataset.subset(spec.train_images, spec.test_images)
    # A phase boundary: the worker of the code checks, and anything it left running, is stopped
    # before the reference is looked up (normally cached before any student ran) and before training.
    ctx.sandbox.close()
    run = reference_run(dataset, spec, device)
    chance = chance_rate(data.y_test)
    threshold = max(spec.floor, run.accuracy - spec.margin)
    details = {
        "threshold": threshold, "reference_accuracy": run.accuracy, "reference_cached": run.cached,
        "reference_epochs": run.epochs, "chance": chance, "margin": spec.margin, "floor": spec.floor,
        "min_lead": spec.min_lead, "mode": mode, "dataset": dataset.name, "synthetic_data": dataset.synthetic,
        "train_images": len(data.x_train), "test_images": len(data.x_test),
    }
    problem = no_verdict(run, chance, spec)
    if problem:
        # The grader's fault (see DESIGN.md): never lost points. `fault` goes into details until
        # the report model carries it.
        return Outcome("error", f"no verdict on your model: {problem}", {"fault": "grader", **details})
    built = ctx.build("ViT", kwargs=spec.config)
    cap = UNCAPPED_TRAINING_WAIT if spec.recipe.max_seconds is None else spec.recipe.max_seconds
    timeout = float(cap) * 1.5 + 120
    try:
        reply = ctx.sandbox.request("train", {"handle": built.handle, "recipe": spec.recipe.settings(), "device": device},
                                    {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test},
                                    timeout=timeout)
        state = _trained_state(ctx, built)
    except SandboxError as error:
        if error.worker_died:
            raise
        raise CheckFailed(f"training raised {error.message}") from None
    finally:
        ctx.sandbox.close()  # the training phase ends: nothing it started keeps running
    info = reply.header
    details.update({
        "epochs": info.get("epochs_run"), "device": info.get("device"), "precision": info.get("autocast"),
        "images_per_second": info.get("images_per_second"), "train_seconds": info.get("train_seconds"),
        "history": info.get("history", []), "compiled": info.get("compiled", False), "notes": info.get("notes", []),
    })
    if info.get("stopped") and "time budget" not in info["stopped"]:
        return Outcome.failed(f"training stopped: {info['stopped']}", **details)
    predictions = reply.arrays.get("predictions")
    if predictions is None or predictions.shape != data.y_test.shape:
        raise CheckFailed(f"training returned no prediction per test image "
                          f"({None if predictions is None else predictions.shape} for {data.y_test.shape})")
    attention = [reply.arrays[k] for k in sorted((k for k in reply.arrays if k.startswith("attention:")),
                                                 key=lambda k: int(k.split(":")[1]))]
    ctx.training = TrainingPictures(info.get("history", []), attention, data.x_test[: len(attention[0]) if attention else 0])
    details["returned_accuracy"] = float(np.mean(predictions == data.y_test))  # what the child claims
    try:
        accuracy, how = _judged_accuracy(ctx, spec, data, state, predictions, threshold, device, details)
    except CheckFailed as failure:
        return Outcome.failed(str(failure), **details)
    finally:
        ctx.sandbox.close()
    details["accuracy"] = accuracy
    data_note = " (synthetic data)" if dataset.synthetic else ""
    summary = (f"test accuracy {accuracy:.1%} vs pass mark {threshold:.1%} (reference {run.accuracy:.1%} - margin "
               f"{spec.margin:.0%}; chance {chance:.1%}), {mode} mode, {details['epochs']} epochs on {device}"
               f"{data_note}; {how}")
    if accuracy >= threshold:
        return Outcome.passed(summary, **details)
    return Outcome.failed(f"{summary}: the model does not learn well enough", **details)


def _trained_state(ctx: GradingContext, built: Built) -> dict[str, np.ndarray]:
    """The trained parameters, which must be exactly those the ViT was built with (names and shapes)."""
    arrays = ctx.sandbox.request("state", {"handle": built.handle}, timeout=ctx.timeout).arrays
    expected = {p.name: p.shape for p in built.params}
    got = {name: tuple(value.shape) for name, value in arrays.items()}
    if got != expected:
        raise CheckFailed(f"after training, the model's parameters are not those ViT({', '.join(expected)[:200]}) "
                          f"was built with ({len(got)} parameters returned for {len(expected)})")
    return arrays


def _normalised(spec: AccuracySpec, images: np.ndarray) -> np.ndarray:
    """Test images as the harness feeds them to the model (the recipe's normalisation), in float64."""
    batch = DeviceData(images, torch.device("cpu"), mean=spec.recipe.mean, std=spec.recipe.std)
    return batch.batch(torch.arange(len(batch)), augment=False).double().numpy()


def _reference_model(config: dict, state: dict[str, np.ndarray], dtype: torch.dtype) -> torch.nn.Module:
    from reference.vit import ViT

    model = ViT(**config).to(dtype)
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
                           for name, value in state.items()})
    return model.eval()


def _judged_accuracy(ctx: GradingContext, spec: AccuracySpec, data: Dataset, state: dict[str, np.ndarray],
                     predictions: np.ndarray, threshold: float, device: str, details: dict) -> tuple[float, str]:
    """The test accuracy the verdict rests on, and a sentence saying how it was computed.

    The trained weights go into a fresh ViT of the student's class in a fresh worker, which runs the
    first test images. If a weight mapping makes the reference compute the same outputs from the
    same weights, the parent computes the accuracy with the reference. Otherwise the student's own
    predictions count, once the fresh model reproduces them and random weights do not reach the pass
    mark (a model that knows the answers without learning them).
    """
    count = min(CHALLENGE_IMAGES, len(data.x_test))
    x = _normalised(spec, data.x_test[:count])
    fresh = ctx.build("ViT", kwargs=spec.config)
    try:
        ctx.set_params(fresh, state)
    except SandboxError as error:
        if error.worker_died:
            raise
        raise CheckFailed(f"the trained weights do not load back into a new ViT: {error.message}") from None
    y = ctx.forward(fresh, x, "the trained ViT's forward").arrays["y"]
    config = {**ViTConfig().kwargs(), **spec.config}
    from reference.vit import ViT

    shapes = {name: tuple(v.shape) for name, v in ViT(**config).state_dict().items()}

    def reference_logits(reference_state: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _reference_model(config, reference_state, torch.float64)(torch.from_numpy(images)).numpy()

    def close(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
        compared = ctx.compare(b, a)
        return compared.close, compared.max_abs

    probe = min(MAPPING_PROBE, count)
    try:
        recipes, why = vit_recipes(fresh.params, fresh.modules, ViTConfig(**config)), ""
    except MappingError as exc:
        recipes, why = [], f"its weights do not map onto the reference ({exc})"
    mapped, error = find_mapping(recipes, shapes, state, lambda s: reference_logits(s, x[:probe]), y[:probe], close)
    if mapped is not None and close(reference_logits(mapped.state, x), y)[0]:
        dev = torch.device(device)
        amp = autocast_dtype(dev, spec.recipe.cpu_bf16)
        model = _reference_model(config, mapped.state, torch.float32).to(dev)
        test = DeviceData(data.x_test, dev, mean=spec.recipe.mean, std=spec.recipe.std)
        recomputed = predict(model, test, 4 * spec.recipe.batch_size, amp)
        recomputed = recomputed.argmax(1).cpu().numpy()
        details.update(accuracy_source="reference", mapping=mapped.recipe.description,
                       returned_predictions_agree=float(np.mean(recomputed == predictions)))
        return (float(np.mean(recomputed == data.y_test)),
                "accuracy computed by the grader with the reference implementation from your trained weights")
    why = why or (f"with its trained weights your ViT does not compute the reference function ("
                  f"{len(recipes)} weight mapping(s) tried, smallest max error {error:.3g})")
    agreement = float(np.mean(y.argmax(1) == predictions[:count]))
    details.update(accuracy_source="student", why_not_recomputed=why, prediction_agreement=agreement)
    if agreement < MIN_AGREEMENT:
        raise CheckFailed(f"the predictions the training returned are not those of the trained weights: a new ViT "
                          f"with those weights agrees on only {agreement:.0%} of {count} test images")
    ctx.randomize(fresh, seed=secrets.randbelow(2**31))  # unknown to the submission
    y_random = ctx.forward(fresh, x, "the ViT's forward with random weights").arrays["y"]
    random_accuracy = float(np.mean(y_random.argmax(1) == data.y_test[:count]))
    details["random_weights_accuracy"] = random_accuracy
    if random_accuracy >= threshold:
        raise CheckFailed(f"with random weights your ViT already reaches {random_accuracy:.1%} on {count} test "
                          f"images (pass mark {threshold:.1%}): its predictions do not come from what it learned")
    return float(np.mean(predictions == data.y_test)), f"accuracy from your model's own predictions: {why}"
