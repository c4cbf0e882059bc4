"""CIFAR-10 on disk: find, download (torchvision), read into uint8 arrays, or synthesise for tests."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCHES_DIR = "cifar-10-batches-py"
SYNTHETIC_MARKER = "VITGRADE_SYNTHETIC"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DatasetMissing(Exception):
    """No usable dataset; the message says what to run."""


@dataclass
class Dataset:
    x_train: np.ndarray  # (N, H, W, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    synthetic: bool

    @property
    def name(self) -> str:
        return f"{'synthetic ' if self.synthetic else ''}CIFAR-10 layout at {self.source}"

    @property
    def digest(self) -> str:
        """Identifies the data for the calibration cache (content, not path)."""
        h = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(array.shape).encode())
            h.update(np.ascontiguousarray(array[:: max(1, len(array) // 512)]).tobytes())
        return h.hexdigest()[:16]

    def subset(self, train: int | None, test: int | None) -> Dataset:
        return Dataset(self.x_train[:train], self.y_train[:train], self.x_test[:test], self.y_test[:test],
                       self.source, self.synthetic)


def default_data_dir() -> Path:
    if os.environ.get("VITGRADE_DATA"):
        return Path(os.environ["VITGRADE_DATA"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vitgrade" / "data"


def _fix_hint(data_dir: Path) -> str:
    return (f"run `vitgrade data download --data-dir {data_dir}` on a machine with internet access, or point "
            "--data-dir / VITGRADE_DATA at a folder holding cifar-10-batches-py/ or an .npz "
            "(x_train, y_train, x_test, y_test)")


def _check(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DatasetMissing(f"{where}: images must be uint8 (N, H, W, 3), found {x.dtype} {x.shape}")
    if len(x) != len(y) or y.ndim != 1:
        raise DatasetMissing(f"{where}: {len(x)} images but labels of shape {y.shape}")


def read_batches(root: Path) -> Dataset:
    """Read the official python batches. They are pickles, as published; torchvision reads them the
    same way. Only instructor-provided data is read here, never student files."""
    folder = root / BATCHES_DIR
    synthetic = (folder / SYNTHETIC_MARKER).exists()
    if not synthetic:
        from torchvision.datasets import CIFAR10

        try:
            train, test = CIFAR10(str(root), train=True, download=False), CIFAR10(str(root), train=False, download=False)
        except RuntimeError as exc:
            raise DatasetMissing(f"{folder} is incomplete or corrupt ({exc}); {_fix_hint(root)}") from None
        return Dataset(train.data, np.asarray(train.targets, np.int64), test.data, np.asarray(test.targets, np.int64),
                       str(folder), False)

    def load(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = load([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = load(["test_batch"])
    return Dataset(x_train, y_train, x_test, y_test, str(folder), True)


def read_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data]
            if missing:
                raise DatasetMissing(f"{path} lacks {', '.join(missing)} (expected {', '.join(NPZ_KEYS)})")
            arrays = {k: data[k] for k in NPZ_KEYS}
            synthetic = bool(data["synthetic"]) if "synthetic" in data else False
    except (OSError, ValueError) as exc:
        raise DatasetMissing(f"{path} is not a readable .npz ({exc})") from None
    _check(arrays["x_train"], arrays["y_train"], str(path))
    _check(arrays["x_test"], arrays["y_test"], str(path))
    return Dataset(arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), str(path), synthetic)


def find_dataset(data_dir: str | Path | None = None) -> Dataset:
    """The dataset in `data_dir` (or $VITGRADE_DATA, or the cache); DatasetMissing says how to get one."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if root.is_file() and root.suffix == ".npz":
        return read_npz(root)
    if (root / BATCHES_DIR).is_dir():
        return read_batches(root)
    npz = sorted(root.glob("*.npz")) if root.is_dir() else []
    if npz:
        return read_npz(npz[0])
    raise DatasetMissing(f"no CIFAR-10 dataset found in {root}; {_fix_hint(root)}")


def download(data_dir: str | Path | None = None) -> Dataset:
    """Download CIFAR-10 with torchvision (needs internet access) and read it back."""
    from torchvision.datasets import CIFAR10

    root = Path(data_dir) if data_dir else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    CIFAR10(str(root), train=True, download=True)
    CIFAR10(str(root), train=False, download=True)
    return read_batches(root)


def synthesize(train: int = 5000, test: int = 1000, seed: int = 0, size: int = 32) -> Dataset:
    """A small, learnable stand-in for CIFAR-10, labelled synthetic everywhere it appears.

    The class is a shape (disc, square, ring, cross, bar) at one of two sizes, drawn in a random
    colour at a random place on textured noise: colour says nothing, so a model must look at
    the arrangement of patches, as on real images.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]

    def mask_for(label: int, cy: int, cx: int) -> np.ndarray:
        r = size // 5 if label < 5 else size // 3
        dy, dx = np.abs(yy - cy), np.abs(xx - cx)
        d2 = dy**2 + dx**2
        return [d2 <= r**2, (dy <= r) & (dx <= r), (d2 <= r**2) & (d2 >= (r * 0.55) ** 2),
                ((dy <= r // 3) & (dx <= r)) | ((dx <= r // 3) & (dy <= r)), (dy <= r // 3) & (dx <= r)][label % 5]

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n)
        images = rng.normal(120, 30, size=(n, size, size, 3))
        for i, label in enumerate(labels):
            cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
            mask = mask_for(int(label), int(cy), int(cx))
            images[i][mask] = rng.integers(0, 256, size=3) + rng.normal(0, 12, size=(int(mask.sum()), 3))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = make(train)
    x_test, y_test = make(test)
    return Dataset(x_train, y_train, x_test, y_test, "generated", True)


def write_npz(dataset: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                        y_test=dataset.y_test, synthetic=np.array(dataset.synthetic))
    return path


def write_batches(dataset: Dataset, root: Path) -> Path:
    """Write the torchvision/official layout (five training batches and a test batch)."""
    folder = root / BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SYNTHETIC_MARKER).write_text("synthetic data made by `vitgrade data synth`; not CIFAR-10\n")

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        entry = {"batch_label": name, "labels": [int(v) for v in y],
                 "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "filenames": [f"{i}.png" for i in range(len(x))]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)

    for i, (x, y) in enumerate(zip(np.array_split(dataset.x_train, 5), np.array_split(dataset.y_train, 5), strict=True), start=1):
        dump(f"data_batch_{i}", x, y)
    dump("test_batch", dataset.x_test, dataset.y_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": len(dataset.x_train) // 5}, fh)
    return folder
