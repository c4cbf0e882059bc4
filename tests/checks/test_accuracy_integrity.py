"""train.accuracy cannot be forged by the submission or skewed by the grader's machine.

Each attack is graded end to end in the sandbox on a tiny, easy dataset (the class is the
brightness of the image), with the quick check cut down to a few seconds of training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grader.batch.grading import grade_submission
from grader.training import data
from grader.training.calibration import AccuracySpec, cache_file, reference_run
from grader.training.trainer import DeviceData

from ..conftest import HANDOUT_SOURCE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TEST_IMAGES = 200


def easy_dataset(train: int = 600, test: int = TEST_IMAGES, seed: int = 0) -> data.Dataset:
    """Ten classes told apart by brightness: any model that looks at its input learns them in a few steps."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n)
        images = labels[:, None, None, None] * 24 + 12 + rng.normal(0, 6, size=(n, 32, 32, 3))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = make(train)
    x_test, y_test = make(test)
    return data.Dataset(x_train, y_train, x_test, y_test, "easy", True)


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    root = tmp_path_factory.mktemp("easy")
    dataset = easy_dataset()
    data.write_npz(dataset, root / "easy.npz")
    return root, dataset


@pytest.fixture(scope="module")
def tiny_rubric():
    from grader.rubric import load_rubric

    rubric = copy.deepcopy(load_rubric())
    rubric.points = {"load.code": 1, "load.definitions": 1, "train.accuracy": 10}
    quick = rubric.accuracy["quick"]
    quick.update(train_images=600, test_images=TEST_IMAGES, margin=0.1,
                 config={**quick["config"], "dim_hidden": 32, "num_heads": 2, "dim_feedforward": 64, "num_layers": 1})
    quick["recipe"] = dataclasses.replace(quick["recipe"], epochs=1, min_steps=100, batch_size=64, lr=0.004, attention_images=0,
                                          max_seconds=900)  # generous: a busy test machine must not cut the reference short
    return rubric


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    """One reference cache for the module's gradings: the reference trains once."""
    folder = tmp_path_factory.getbasetemp() / "accuracy-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def grade(tmp_path: Path, source: str, rubric, dataset_root: Path):
    path = tmp_path / "submission.py"
    path.write_text(source, encoding="utf-8")
    return grade_submission(path, rubric=rubric, accuracy="quick", data_dir=dataset_root, threads=1)


def at_load(body: str) -> str:
    """Run `body` in the worker while the submission loads (FNN's class body refers to it)."""
    indented = "\n".join(f"        {line}" for line in body.strip().splitlines())
    handout = HANDOUT_SOURCE.replace("class FNN(nn.Module):\n", "class FNN(nn.Module):\n    attack = Attack\n")
    return ("import os, sys, subprocess\nclass Attack:\n    def attack():\n"
            f"{indented}\n    attack()\n\n" + handout)


IGNORES_INPUT = ("        bs, c, h, w = x.shape  # バッチサイズ、チャンネル、高さ、幅\n",
                 "        bs, c, h, w = x.shape  # バッチサイズ、チャンネル、高さ、幅\n        x = x * 0\n")

# The ViT ignores its input; at load, the submission patches the worker's training handler so
# that training (and the predictions it returns) uses the handout's real forward instead.
SWAPPED_TRAINING = at_load("""
worker = sys.modules['__main__'].Worker
original = worker.op_train
def op_train(self, header, arrays):
    model = self.objects[header['handle']]
    model.forward = model.real_forward
    try:
        return original(self, header, arrays)
    finally:
        del model.forward
worker.op_train = op_train
""")
# Keep a working copy of the handout's ViT.forward as real_forward, then break forward.
_VIT_FORWARD = ("    def forward(self, x):\n" + IGNORES_INPUT[0]
                + HANDOUT_SOURCE.split(IGNORES_INPUT[0])[1].split("        return self.linear(x)\n")[0]
                + "        return self.linear(x)\n")
assert _VIT_FORWARD in SWAPPED_TRAINING
SWAPPED_TRAINING = SWAPPED_TRAINING.replace(
    _VIT_FORWARD, _VIT_FORWARD.replace(*IGNORES_INPUT) + "\n" + _VIT_FORWARD.replace("def forward", "def real_forward"))


def hash_lookup_source(dataset: data.Dataset, recipe: dict) -> str:
    """Logits multiplied by 0, plus the test label looked up by a fingerprint of the image."""
    normalised = DeviceData(dataset.x_test, torch.device("cpu")).batch(torch.arange(len(dataset.x_test)), augment=False)
    keys = {round(float(image.double().sum()), 1): int(label) for image, label in zip(normalised, dataset.y_test,
                                                                                       strict=True)}
    table = "{" + ", ".join(f"{k!r}: {v}" for k, v in keys.items()) + "}"
    lookup = (f"        answers = {table}\n"
              "        known = torch.zeros(x.shape[0], 10, dtype=x.dtype, device=x.device)\n"
              "        for i, image in enumerate(x):\n"
              "            label = answers.get(round(float(image.double().sum()), 1))\n"
              "            if label is not None:\n"
              "                known[i, label] = 100.0\n")
    head = "        x = self.norm(x)[:, 0]\n        return self.linear(x)"
    assert head in HANDOUT_SOURCE
    source = HANDOUT_SOURCE.replace("        bs, c, h, w = x.shape  # バッチサイズ、チャンネル、高さ、幅\n",
                                    "        bs, c, h, w = x.shape  # バッチサイズ、チャンネル、高さ、幅\n" + lookup)
    return source.replace(head, "        x = self.norm(x)[:, 0]\n        return self.linear(x) * 0 + known")


def test_an_honest_model_passes_on_accuracy_the_grader_computed(tmp_path, easy, tiny_rubric, cache):
    report = grade(tmp_path, HANDOUT_SOURCE, tiny_rubric, easy[0])
    check = report.check("train.accuracy")
    assert check.status == "passed", check.message
    assert check.details["accuracy_source"] == "reference"
    assert check.details["mapping"].startswith("layers=layers.0")
    assert "computed by the grader with the reference implementation" in check.message
    assert check.details["accuracy"] >= check.details["threshold"] > check.details["chance"]


def test_patching_the_training_handler_earns_nothing(tmp_path, easy, tiny_rubric, cache):
    report = grade(tmp_path, SWAPPED_TRAINING, tiny_rubric, easy[0])
    check = report.check("train.accuracy")
    assert check.status == "failed", check.message
    assert check.points == 0 and check.details["returned_accuracy"] >= check.details["threshold"]  # it would have passed
    assert "not those of the trained weights" in check.message


def test_looking_up_test_labels_by_image_earns_nothing(tmp_path, easy, tiny_rubric, cache):
    source = hash_lookup_source(easy[1], tiny_rubric.accuracy["quick"]["recipe"])
    report = grade(tmp_path, source, tiny_rubric, easy[0])
    check = report.check("train.accuracy")
    assert check.status == "failed", check.message
    assert check.details["accuracy_source"] == "student" and check.details["returned_accuracy"] == 1.0
    assert check.details["random_weights_accuracy"] >= check.details["threshold"]
    assert "with random weights your ViT already reaches" in check.message


LEFTOVER = at_load("""
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(900)  # leftover-{token}'],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""")


def _alive_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _remaining(pids: set[int], marker: str) -> set[int]:
    """Those of `pids` still running; SIGKILL is asynchronous, so a killed process gets a few seconds to go."""
    for _ in range(50):
        left = pids & set(_alive_with(marker))
        if not left:
            return left
        time.sleep(0.2)
    return left


def test_leftover_processes_are_stopped_before_training_and_the_reference_trains_first(
        tmp_path, easy, tiny_rubric, cache, monkeypatch):
    """A submission's leftovers must not share the machine with training, and the reference that sets
    the pass mark trains (and is cached) before any student code runs."""
    from grader.sandbox import Sandbox
    from grader.training import calibration

    token = os.urandom(6).hex()
    events: list[str] = []
    original_request, original_train = Sandbox.request, calibration.train_reference

    marker = f"leftover-{token}"
    spawned: list[set[int]] = []  # the leftovers alive right after each worker start (it spawns one as it loads)

    def request(self, op, *args, **kwargs):
        if op == "train":
            earlier = set().union(*spawned[:-1])  # spawned by the workers of earlier phases
            left = _remaining(earlier, marker)
            events.append(f"train with {len(left)} leftover(s) of earlier workers")
        return original_request(self, op, *args, **kwargs)

    def train_reference(*args, **kwargs):
        events.append("reference")
        return original_train(*args, **kwargs)

    def start(self, _original=Sandbox.start):
        events.append("student code")
        try:
            return _original(self)
        finally:
            seen = set().union(*spawned)
            for _ in range(50):  # on a busy machine the new leftover may take a moment to show in /proc
                if set(_alive_with(marker)) - seen:
                    break
                time.sleep(0.1)
            spawned.append(set(_alive_with(marker)) - seen)

    monkeypatch.setattr(Sandbox, "request", request)
    monkeypatch.setattr(Sandbox, "start", start)
    monkeypatch.setattr(calibration, "train_reference", train_reference)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-cache"))
    report = grade(tmp_path, LEFTOVER.replace("{token}", token), tiny_rubric, easy[0])
    assert report.check("train.accuracy").status == "passed", report.check("train.accuracy").message
    assert events[0] == "reference" and events.count("reference") == 1
    assert spawned[0], f"the submission's leftover process did not start: {events} {spawned} {report.output[-600:]}"
    # the code checks' worker, then a fresh one for training, with the first one's leftover gone
    assert events[:4] == ["reference", "student code", "student code", "train with 0 leftover(s) of earlier workers"], \
        events
    assert not _alive_with(marker)  # nor after grading


def test_a_reference_run_cut_short_is_never_cached_and_is_no_verdict(tmp_path, easy, tiny_rubric, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rubric = copy.deepcopy(tiny_rubric)
    quick = rubric.accuracy["quick"]
    quick["recipe"] = dataclasses.replace(quick["recipe"], max_seconds=0, epochs=2, min_steps=0)  # stops after one epoch
    spec = AccuracySpec.from_rubric(rubric.accuracy, "quick")
    run = reference_run(easy[1], spec, "cpu")
    assert "time budget" in run.stopped and not run.cached
    assert not cache_file().exists() or spec.key(easy[1], "cpu") not in json.loads(cache_file().read_text())
    report = grade(tmp_path, HANDOUT_SOURCE, rubric, easy[0])
    check = report.check("train.accuracy")
    assert check.status == "error" and check.fault == "grader", check.message
    assert "cut short" in check.message and report.max_score == 2  # not counted as lost points
