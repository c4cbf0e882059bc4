"""Run options resolved once (grader/options.py) and the cluster's workers grading with the driver's options."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch

from grader.options import RunOptions, resolve

from .conftest import EXAMPLES


def test_auto_is_full_with_cuda_and_quick_without(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto") == RunOptions(accuracy="full", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto") == RunOptions(accuracy="quick", device="cpu")


@pytest.mark.parametrize("mode, device", [("off", "cpu"), ("quick", "cpu"), ("full", "cuda")])
def test_an_explicit_mode_is_kept_and_decides_the_device(monkeypatch, mode, device):
    # `full` means a GPU even where the resolving machine has none (a Ray driver): the machine that
    # trains says whether it has one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = resolve(mode, isolation="none", timeout=30, data_dir="data", executor="ray")
    assert (options.accuracy, options.device, options.isolation, options.timeout, str(options.data_dir),
            options.executor) == (mode, device, "none", 30, "data", "ray")


def test_bad_words_are_refused_and_the_options_cannot_change():
    with pytest.raises(ValueError, match="accuracy mode 'fast'"):
        resolve("fast")
    with pytest.raises(ValueError, match="executor 'slurm'"):
        resolve("off", executor="slurm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolve("off").accuracy = "full"


def test_the_fingerprint_takes_only_a_resolved_mode(tmp_path):
    from grader.batch.grading import fingerprint
    from grader.rubric import load_rubric

    with pytest.raises(ValueError, match="not a resolved mode"):
        fingerprint(tmp_path / "s1.py", load_rubric(), "auto")


def test_batch_options_take_resolved_options_or_the_shorthand(tmp_path):
    from grader.batch.run import BatchOptions

    assert BatchOptions(out=tmp_path, accuracy="off").run == resolve("off")
    assert BatchOptions(out=tmp_path, run=resolve("quick")).run.accuracy == "quick"
    with pytest.raises(TypeError, match="either run or accuracy"):
        BatchOptions(out=tmp_path, run=resolve("quick"), accuracy="off")


def test_a_cluster_worker_with_a_gpu_grades_with_the_drivers_resolution(tmp_path, monkeypatch):
    """--executor ray --accuracy auto with a driver without a GPU and workers with one: the worker must not
    resolve `auto` again (it would say full where the driver said quick), or the report's fingerprint never
    matches the driver's and every resume regrades the class."""
    cloudpickle = pytest.importorskip("cloudpickle")
    from grader.batch.ray_executor import _run
    from grader.batch.run import BatchOptions, grade_batch
    from grader.rubric import load_rubric

    rubric = copy.deepcopy(load_rubric())
    rubric.points = {"load.code": 1, "load.definitions": 1}  # cheap; the fingerprint is what is tested
    submissions = tmp_path / "class"
    submissions.mkdir()
    shutil.copy(EXAMPLES / "s1002_separate_qkv.py", submissions / "ann.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the driver
    graded: list[str] = []

    def worker_with_a_gpu(entries, grade, done, workers):
        """What ray_executor does, on a worker whose torch sees a GPU: the grading function travels pickled
        (ray.put) and runs through the task's own function."""
        shipped = cloudpickle.loads(cloudpickle.dumps(grade))
        with monkeypatch.context() as worker:
            worker.setattr(torch.cuda, "is_available", lambda: True)
            reports = [_run(shipped, entry) for entry in entries]
        for report in reports:
            graded.append(report.student)
            done(report)

    def options() -> BatchOptions:
        return BatchOptions(out=tmp_path / "out", rubric=rubric, accuracy="auto", progress=False, preflight=False,
                            workers=1)

    first = grade_batch([submissions], options(), executor=worker_with_a_gpu)
    assert first.graded == ["ann"] and graded == ["ann"]
    report = (tmp_path / "out" / "students" / "ann" / "report.json").read_text()
    assert '"accuracy": "quick"' in report  # the driver's resolution, not the worker's
    again = grade_batch([submissions], options(), executor=worker_with_a_gpu)
    assert again.reused == ["ann"] and graded == ["ann"]  # resumed: nobody regraded


# The training recipe: one dataclass, validated when the rubric loads.

@pytest.mark.parametrize("edit, words", [
    (("lr = 0.002,", 'lr = "fast",'), "accuracy.quick.recipe.lr: expected a number > 0, got 'fast'"),
    (("epochs = 4,", "epochs = 4.5,"), "accuracy.quick.recipe.epochs: expected a whole number >= 1, got 4.5"),
    (("augment = false,", 'augment = "no",'), "accuracy.quick.recipe.augment: expected true or false"),
    (('optimizer = "adamw",', 'optimizer = "adam",'), "accuracy.quick.recipe.optimizer: expected one of adamw, sgd"),
    (("epochs = 4, ", ""), "accuracy.quick.recipe.epochs: missing"),
    (("seed = 0,", "seed = 0, mean = [0.5, 0.5],"), "accuracy.quick.recipe.mean: expected 3 numbers"),
])
def test_a_bad_recipe_is_a_rubric_error_naming_the_key(tmp_path, edit, words):
    from grader.rubric import DEFAULT_RUBRIC, RubricError, load_rubric

    text = DEFAULT_RUBRIC.read_text(encoding="utf-8")
    quick = text.index("[accuracy.quick]")
    assert edit[0] in text[quick:]
    path = tmp_path / "rubric.toml"
    path.write_text(text[:quick] + text[quick:].replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(RubricError) as info:
        load_rubric(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_the_recipe_keeps_the_files_table_for_digests_and_fills_the_rest_from_its_defaults():
    import tomllib

    from grader.rubric import DEFAULT_RUBRIC, load_rubric
    from grader.training.recipe import CIFAR_MEAN, TrainingRecipe

    raw = tomllib.loads(DEFAULT_RUBRIC.read_text(encoding="utf-8"))["accuracy"]["quick"]["recipe"]
    recipe = load_rubric().accuracy["quick"]["recipe"]
    assert isinstance(recipe, TrainingRecipe) and recipe.table() == raw  # what the verdict digest hashes
    assert recipe.mean == CIFAR_MEAN and recipe.compile is False and recipe.decay == raw["weight_decay"]
    changed = dataclasses.replace(recipe, max_seconds=1200)
    assert changed.table() == {**raw, "max_seconds": 1200}  # a change made in code counts too
    assert TrainingRecipe(epochs=1, batch_size=8, lr=0.1).decay == 0.05  # AdamW's usual decay
    assert TrainingRecipe(epochs=1, batch_size=8, lr=0.1, optimizer="sgd").decay == 0.0
    assert TrainingRecipe.from_table(recipe.settings()) == recipe  # what the sandbox's trainer rebuilds


def test_the_trainer_validates_a_plain_dict_before_training():
    from grader.training.trainer import train_and_predict

    with pytest.raises(ValueError, match=r"recipe\.batch_size: expected a whole number >= 1, got '64'"):
        train_and_predict(torch.nn.Linear(2, 2), {}, {"epochs": 1, "batch_size": "64", "lr": 0.1})


def test_the_workers_limits_come_from_the_rubric_and_the_resolved_mode():
    """grader.rubric.limits.worker_limits, the one place a rubric becomes sandbox Limits: the bundled rubric's 6 GiB,
    CUDA only for `full` with train.accuracy in the rubric, threads and GPU passed through."""
    from grader.rubric import load_rubric
    from grader.rubric.limits import worker_limits
    from grader.sandbox import Limits

    rubric = load_rubric()
    assert rubric.limits["memory_gib"] == 6.0 and rubric.enabled("train.accuracy")
    for mode in ("off", "quick"):
        assert worker_limits(rubric, resolve(mode)) == Limits(memory_bytes=6 * 1024**3)
    full = RunOptions(accuracy="full", device="cuda")
    assert worker_limits(rubric, full, 4, "1") == Limits(memory_bytes=6 * 1024**3, cuda=True, threads=4, gpu="1")
    rubric.points.pop("train.accuracy")  # no training, no CUDA for the worker
    rubric.limits["memory_gib"] = 2.5
    assert worker_limits(rubric, full) == Limits(memory_bytes=int(2.5 * 1024**3))
