"""`vitgrade bench`: the harness against the handout's training loop, same model, same device, one run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.training.trainer import train_and_predict

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for the fraction of peak.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}


def forward_flops(config: dict) -> float:
    """Analytic FLOPs of one image's forward pass (multiply-add = 2 FLOPs)."""
    img, p = config.get("img_size", 32), config.get("patch_size", 4)
    d, f, c = config.get("dim_hidden", 512), config.get("dim_feedforward", 512), config.get("num_classes", 10)
    layers = config.get("num_layers", 6)
    patches = (img // p) ** 2
    n = patches + 1
    per_layer = 2 * n * d * 3 * d + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * f * 2
    return 2 * patches * 3 * p * p * d + layers * per_layer + 2 * d * c


def handout_loop_images_per_second(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    """The handout's loop: torchvision ToTensor + Normalize per image, DataLoader batch 100, SGD, fp32."""
    import torchvision.transforms as transforms
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    class Images(Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):
            return transform(Image.fromarray(x[i])), int(y[i])

    loader = DataLoader(Images(), batch_size=100, shuffle=True)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = 0
    started = time.perf_counter()
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # the handout accumulates loss.item() every step, which synchronises
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


@dataclass
class BenchResult:
    device: str
    config: dict
    images: int
    handout_images_per_second: float
    harness_images_per_second: float
    tflops: float | None = None
    peak_fraction: float | None = None

    @property
    def ratio(self) -> float:
        return self.harness_images_per_second / self.handout_images_per_second

    def describe(self) -> str:
        lines = [f"device {self.device}, config {self.config}, {self.images} training images per loop",
                 f"handout loop (DataLoader, ToTensor+Normalize, batch 100, fp32): "
                 f"{self.handout_images_per_second:,.0f} images/s",
                 f"harness: {self.harness_images_per_second:,.0f} images/s",
                 f"ratio harness / handout: {self.ratio:.1f}x"]
        if self.tflops is not None:
            peak = f", {self.peak_fraction:.0%} of the card's bf16 peak" if self.peak_fraction else ""
            lines.append(f"harness achieved {self.tflops:.1f} TFLOP/s (analytic count){peak}")
        return "\n".join(lines)


def bench(config: dict, images: int, device: str, recipe: dict) -> BenchResult:
    """Both loops on the same model architecture and data, on one device, in one run."""
    from reference.vit import ViT

    dev = torch.device(device)
    rng = np.random.default_rng(0)
    side = config.get("img_size", 32)
    x = rng.integers(0, 256, size=(images, side, side, 3), dtype=np.uint8)  # synthetic, CIFAR-10-sized
    y = rng.integers(0, config.get("num_classes", 10), size=images).astype(np.int64)
    torch.manual_seed(0)
    handout = handout_loop_images_per_second(ViT(**config), x, y, dev)
    torch.manual_seed(0)
    # Warm up once (allocator, kernels, compile), then measure a second, identical run.
    harness_recipe = {**recipe, "epochs": 1, "val_fraction": 0.0, "attention_images": 0}
    train_and_predict(ViT(**config), {"x_train": x[: min(images, 4 * recipe["batch_size"])],
                                      "y_train": y[: min(images, 4 * recipe["batch_size"])], "x_test": x[:8]},
                      harness_recipe, device=device)
    outcome = train_and_predict(ViT(**config), {"x_train": x, "y_train": y, "x_test": x[:8]}, harness_recipe,
                                device=device)
    harness = outcome.header["images_per_second"]
    result = BenchResult(device=str(dev), config=config, images=images, handout_images_per_second=handout,
                         harness_images_per_second=harness)
    if dev.type == "cuda":
        result.tflops = 3 * forward_flops(config) * harness / 1e12  # forward + backward ~ 3x forward
        name = torch.cuda.get_device_name(dev)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result.peak_fraction = result.tflops / peak if peak else None
        result.device = f"{dev} ({name})"
    return result
