"""Data on disk, the harness, and the accuracy check (correct models pass, models that cannot learn fail)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from grader.batch.grading import grade_submission
from grader.training import data
from grader.training.bench import forward_flops
from grader.training.trainer import DeviceData, train_and_predict

from ..conftest import EXAMPLES, HANDOUT_SOURCE

# The device-agnostic parts run on every device this machine has; CUDA is reported as skipped without one.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dataset = data.synthesize(train=2000, test=400, seed=1)
    data.write_npz(dataset, root / "npz" / "synthetic.npz")
    data.write_batches(dataset, root / "batches")
    return root, dataset


def test_both_layouts_round_trip(synthetic):
    root, dataset = synthetic
    for folder in (root / "npz", root / "batches"):
        found = data.find_dataset(folder)
        assert found.synthetic
        np.testing.assert_array_equal(found.x_train, dataset.x_train)
        np.testing.assert_array_equal(found.y_test, dataset.y_test)
        assert found.x_train.dtype == np.uint8 and found.x_train.shape == (2000, 32, 32, 3)


def test_missing_and_corrupt_data_say_what_to_run(tmp_path):
    with pytest.raises(data.DatasetMissing, match="vitgrade data download"):
        data.find_dataset(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    with pytest.raises(data.DatasetMissing, match="not a readable .npz"):
        data.find_dataset(tmp_path)
    (tmp_path / "bad.npz").unlink()
    (tmp_path / data.BATCHES_DIR).mkdir()
    (tmp_path / data.BATCHES_DIR / "data_batch_1").write_bytes(b"truncated")
    with pytest.raises(data.DatasetMissing, match="incomplete or corrupt"):
        data.find_dataset(tmp_path)


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_is_a_padded_crop_or_its_mirror(device):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    device_data = DeviceData(images, torch.device(device), mean=(0, 0, 0), std=(1 / 255,) * 3)
    out = device_data.batch(torch.arange(6, device=device), augment=True,
                            generator=torch.Generator(device=device).manual_seed(3)).cpu()
    padded = torch.nn.functional.pad(torch.from_numpy(images).permute(0, 3, 1, 2).float(), (4, 4, 4, 4))
    for i in range(6):
        crops = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_never_needs_test_labels_and_reports_history(synthetic, device):
    _, dataset = synthetic
    from reference.vit import ViT

    model = ViT(dim_hidden=32, num_heads=2, dim_feedforward=64, num_layers=1)
    arrays = {"x_train": dataset.x_train[:512], "y_train": dataset.y_train[:512], "x_test": dataset.x_test[:64]}
    outcome = train_and_predict(model, arrays, {"epochs": 2, "batch_size": 128, "lr": 2e-3, "attention_images": 2},
                                device=device)
    assert outcome.header["device"].startswith(device)
    assert outcome.arrays["predictions"].shape == (64,)
    assert [h["epoch"] for h in outcome.header["history"]] == [1, 2]
    assert outcome.arrays["attention:0"].shape == (2, 2, 65, 65)
    assert outcome.header["images_per_second"] > 0


def test_nan_loss_stops_with_a_message(synthetic):
    _, dataset = synthetic
    from reference.vit import ViT

    arrays = {"x_train": dataset.x_train[:256], "y_train": dataset.y_train[:256], "x_test": dataset.x_test[:16]}
    outcome = train_and_predict(ViT(dim_hidden=32, num_heads=2, dim_feedforward=64, num_layers=1), arrays,
                                {"epochs": 3, "batch_size": 64, "lr": 1e30, "optimizer": "sgd", "schedule": "constant"})
    assert "training loss became" in outcome.header["stopped"]


def test_progress_bar_shows_loss_and_throughput(synthetic, capsys):
    _, dataset = synthetic
    from reference.vit import ViT

    arrays = {"x_train": dataset.x_train[:256], "y_train": dataset.y_train[:256], "x_test": dataset.x_test[:16]}
    train_and_predict(ViT(dim_hidden=32, num_heads=2, dim_feedforward=64, num_layers=1), arrays,
                      {"epochs": 2, "batch_size": 64, "lr": 1e-3}, progress=True)
    shown = capsys.readouterr().err
    assert "training" in shown and "epoch=2" in shown and "loss=" in shown and "images_s=" in shown


def test_a_failing_compile_falls_back_to_eager(synthetic, monkeypatch):
    _, dataset = synthetic
    from reference.vit import ViT

    def broken_compile(model, mode="default"):
        def call(*args, **kwargs):
            raise RuntimeError("inductor: no C compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    arrays = {"x_train": dataset.x_train[:256], "y_train": dataset.y_train[:256], "x_test": dataset.x_test[:16]}
    outcome = train_and_predict(ViT(dim_hidden=32, num_heads=2, dim_feedforward=64, num_layers=1), arrays,
                                {"epochs": 1, "batch_size": 64, "lr": 1e-3, "compile": True})
    assert outcome.header["compiled"] is False
    assert "torch.compile failed (RuntimeError: inductor: no C compiler); trained eagerly" in outcome.header["notes"]
    assert outcome.header["epochs_run"] == 1 and not outcome.header["stopped"]


def test_out_of_memory_stops_with_a_message(synthetic):
    _, dataset = synthetic

    class Greedy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            if self.training:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return self.head(x.flatten(1))

    arrays = {"x_train": dataset.x_train[:128], "y_train": dataset.y_train[:128], "x_test": dataset.x_test[:16]}
    outcome = train_and_predict(Greedy(), arrays, {"epochs": 2, "batch_size": 64, "lr": 1e-3})
    assert outcome.header["stopped"].startswith("out of CPU memory at batch size 64 in epoch 1")
    assert outcome.arrays["predictions"].shape == (16,)


@pytest.mark.slow
def test_bench_measures_both_loops_in_one_run():
    from grader.training.bench import bench

    small = {"dim_hidden": 32, "num_heads": 2, "dim_feedforward": 64, "num_layers": 1}
    rounds = []
    result = bench(small, 256, "cpu", {"lr": 1e-3}, batch_sizes=[64, 128], compile_modes=[None], repeats=2,
                   progress=rounds.append)
    assert len(result.handout) == 2 and all(speed > 0 for speed in result.handout)
    assert len(result.handout_data_share) == 2 and all(0 < share < 1 for share in result.handout_data_share)
    assert list(result.harness) == ["batch 64, eager", "batch 128, eager"]
    assert all(len(runs) == 2 and min(runs) > 0 for runs in result.harness.values())
    assert len(rounds) == 2 and rounds[0].startswith("round 1/2: handout")
    assert "x the handout loop" in result.describe() and "median of 2 run(s)" in result.describe()
    assert "of its time waiting for data" in result.describe()
    assert "where harness" not in result.describe()
    fused = bench(small, 128, "cpu", {"lr": 1e-3}, batch_sizes=[64], compile_modes=[None], repeats=1,
                  fused_attention=True, profile=True)
    assert list(fused.harness) == ["batch 64, eager, fused attention"]
    assert "where harness batch 64, eager, fused attention spends its time" in fused.describe()
    assert "aten::" in fused.profile  # the operators, by self time


def test_flop_count_of_the_default_model():
    # patch embedding + 6 layers + head, per image; the default model is about 1.2 GFLOP forward.
    assert 1.0e9 < forward_flops({}) < 1.5e9


DETACHED_ENCODER = HANDOUT_SOURCE.replace("        x = self.patch_embed(x)\n",
                                          "        x = self.patch_embed(x).detach()\n").replace(
    "            x = layer(x)\n", "            x = layer(x).detach()\n")


@pytest.fixture(scope="module")
def quick_rubric():
    from grader.rubric import load_rubric

    rubric = copy.deepcopy(load_rubric())
    rubric.points = {"load.code": 1, "load.definitions": 1, "train.accuracy": 10}
    quick = rubric.accuracy["quick"]
    quick.update(train_images=2000, test_images=400)
    # A smaller model and fewer steps than the shipped recipe (which test_quick_recipe_learns_digits_... runs):
    # still enough for the reference to clear chance on these shapes, with a cap a busy test machine cannot
    # hit (a capped reference run is no verdict).
    quick["config"] = {**quick["config"], "dim_hidden": 32, "num_heads": 2, "dim_feedforward": 64, "num_layers": 1}
    quick["recipe"] = dataclasses.replace(quick["recipe"], min_steps=150, batch_size=64, lr=0.004, max_seconds=1200)
    return rubric


@pytest.mark.slow
@pytest.mark.timeout(900)
# The handout's own classes are graded with the shipped recipe on real digits (test_quick_recipe_learns_digits_...);
# here, another correct style and a model that cannot learn, with a smaller recipe (quick_rubric).
@pytest.mark.parametrize("name, source, passes", [
    ("separate_qkv", EXAMPLES / "s1002_separate_qkv.py", True),
    ("detached_encoder", DETACHED_ENCODER, False),
], ids=["separate_qkv", "detached_encoder"])
def test_quick_accuracy_check(tmp_path, monkeypatch, synthetic, quick_rubric, name, source, passes):
    monkeypatch.setenv("XDG_CACHE_HOME", str(synthetic[0] / "cache"))  # the reference baseline, measured once
    path = source if not isinstance(source, str) else tmp_path / f"{name}.py"
    if isinstance(source, str):
        path.write_text(source, encoding="utf-8")
    report = grade_submission(path, rubric=quick_rubric, accuracy="quick", data_dir=synthetic[0] / "npz",
                              threads=1)
    check = report.check("train.accuracy")
    details = check.details
    assert check.status in ("passed", "failed"), check.message
    assert details["synthetic_data"] and details["mode"] == "quick" and details["test_images"] == 400
    assert details["precision"] in ("float32", "bfloat16")
    assert (check.status == "passed") == passes, check.message
    if not passes:
        assert details["accuracy"] < details["threshold"] <= details["reference_accuracy"]
        assert "does not learn" in check.message or "stopped" in check.message
    assert "attention.png" in report.attachments or not passes


@pytest.mark.slow
def test_accuracy_check_is_skipped_with_the_reason_when_there_is_no_data(tmp_path, quick_rubric):
    report = grade_submission(EXAMPLES / "s1002_separate_qkv.py", rubric=quick_rubric, accuracy="quick",
                              data_dir=tmp_path)
    check = report.check("train.accuracy")
    assert check.status == "skipped" and "vitgrade data download" in check.message
    assert report.max_score == 2  # a skipped check counts in neither score nor max score


@pytest.mark.slow
def test_calibrate_suggests_a_margin_caches_the_baseline_and_writes_the_rubric(tmp_path, monkeypatch, synthetic, capsys):
    import tomlkit

    from grader.cli import main
    from grader.rubric import DEFAULT_RUBRIC, load_rubric
    from grader.training.calibration import AccuracySpec, cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    document = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    quick = document["accuracy"]["quick"]
    quick["train_images"], quick["test_images"] = 600, 200
    # Small enough to train in seconds, still a recipe whose reference clears chance (calibrate refuses others).
    quick["config"].update(dim_hidden=32, num_heads=2, dim_feedforward=64, num_layers=1)
    quick["recipe"].update(epochs=1, min_steps=100, batch_size=64, lr=0.004)
    rubric = tmp_path / "rubric.toml"
    rubric.write_text(tomlkit.dumps(document), encoding="utf-8")
    written = tmp_path / "calibrated.toml"
    from ..checks.test_accuracy_integrity import easy_dataset

    easy = data.write_npz(easy_dataset(), tmp_path / "easy" / "easy.npz").parent
    assert main(["calibrate", "--accuracy", "quick", "--seeds", "2", "--rubric", str(rubric),
                 "--data-dir", str(easy), "--write", str(written)]) == 0
    out = capsys.readouterr().out
    suggested = float(out.split("suggested [accuracy.quick] margin = ")[1].split()[0])
    assert 0.02 <= suggested <= 1 and f"wrote {written}" in out
    calibrated = load_rubric(written)
    assert calibrated.accuracy["quick"]["margin"] == suggested
    assert "# A small configuration" in written.read_text(encoding="utf-8")  # the rubric's comments are kept
    # The recipe seed's accuracy is cached under the key grading with the written rubric looks up.
    spec = AccuracySpec.from_rubric(calibrated.accuracy, "quick")
    cached = json.loads(cache_file().read_text())
    assert list(cached) == [spec.key(data.find_dataset(easy), "cpu")]
    assert main(["calibrate", "--accuracy", "quick", "--seeds", "1", "--rubric", str(rubric)]) == 2


# -- real data nobody here made: scikit-learn's UCI digits as a CIFAR-shaped dataset -------------------------
def digits_dataset() -> data.Dataset:
    """1,797 8x8 digits (0-16), upscaled to 32x32x3 uint8 and shuffled: 1,400 to train on, 397 to test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)[..., None].repeat(3, axis=-1)
    order = np.random.default_rng(0).permutation(len(images))
    x, y = images[order], digits.target.astype(np.int64)[order]
    return data.Dataset(x[:1400], y[:1400], x[1400:], y[1400:], "UCI digits", False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn", reason="scikit-learn is a test dependency (pip install .[test])")
    root = tmp_path_factory.mktemp("digits")
    data.write_npz(digits_dataset(), root / "digits.npz")
    return root


def _digits_rubric(recipe_changes: dict | None = None):
    from grader.rubric import load_rubric

    rubric = copy.deepcopy(load_rubric())
    rubric.points = {"load.code": 1, "load.definitions": 1, "train.accuracy": 10}
    quick = rubric.accuracy["quick"]
    # A busy test machine must not cut the reference short (a capped run is no verdict).
    quick["recipe"] = dataclasses.replace(quick["recipe"], max_seconds=1200, **(recipe_changes or {}))
    return rubric


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_recipe_learns_digits_and_a_correct_model_passes_clearly(digits, tmp_path, monkeypatch):
    """The shipped quick recipe on real digits: the handout's own classes (the reference trains first)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "correct.py"
    path.write_text(HANDOUT_SOURCE, encoding="utf-8")
    report = grade_submission(path, rubric=_digits_rubric(), accuracy="quick", data_dir=digits, threads=1)
    correct = report.check("train.accuracy")
    details = correct.details
    assert correct.status == "passed", correct.message
    assert not details["synthetic_data"] and details["train_images"] == 1400 and details["test_images"] == 397
    assert details["epochs"] > 4  # the recipe's 4 epochs would be 40 steps on 1,260 images: min_steps adds epochs
    # The pass mark stands clear of chance, which is all a model whose output ignores its input can reach (it
    # predicts one class for every image), so such a model fails by construction; test_quick_accuracy_check
    # trains one that cannot learn.
    assert details["reference_accuracy"] - details["margin"] >= details["chance"] + details["min_lead"]
    assert details["accuracy"] >= details["threshold"] + 0.1, correct.message  # a clear margin
    assert details["accuracy_source"] == "reference"
    assert details["precision"] in ("float32", "bfloat16")
    assert "attention.png" in report.attachments


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_reference_that_cannot_clear_chance_is_no_verdict_and_calibrate_refuses_it(digits, tmp_path, monkeypatch,
                                                                                      capsys):
    """The recipe as it was (4 epochs counted, 40 steps on 1,260 digits): the reference stays near chance."""
    import tomlkit

    from grader.cli import main
    from grader.rubric import DEFAULT_RUBRIC

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weak = {"min_steps": 0, "augment": True}
    report = grade_submission(EXAMPLES / "s1002_separate_qkv.py", rubric=_digits_rubric(weak), accuracy="quick",
                              data_dir=digits, threads=1)
    check = report.check("train.accuracy")
    assert check.status == "error" and check.fault == "grader", check.message
    assert "no verdict on your model: the reference itself reaches only" in check.message
    assert f"chance: {check.details['chance']:.1%}" in check.message
    assert report.score == report.max_score == 2  # the grader's fault costs no points
    document = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    document["accuracy"]["quick"]["recipe"].update(weak)
    rubric = tmp_path / "weak.toml"
    rubric.write_text(tomlkit.dumps(document), encoding="utf-8")
    assert main(["calibrate", "--accuracy", "quick", "--seeds", "2", "--rubric", str(rubric),
                 "--data-dir", str(digits)]) == 2
    assert "refused: the reference itself reaches only" in capsys.readouterr().err
