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
    harness: dict[str, float]  # variant (batch size, compile mode) -> images/s
    peak_tflops: float | None = None

    def describe(self) -> str:
        lines = [f"device {self.device}, config {self.config or 'default'}, {self.images} training images per loop",
                 f"handout loop (DataLoader, ToTensor+Normalize, batch 100, fp32): "
                 f"{self.handout_images_per_second:,.0f} images/s"]
        lines += [self.variant_line(name) for name in self.harness]
        return "\n".join(lines)

    def variant_line(self, name: str) -> str:
        speed = self.harness[name]
        line = f"harness {name}: {speed:,.0f} images/s, {speed / self.handout_images_per_second:.1f}x the handout loop"
        if self.device.startswith("cuda"):
            tflops = 3 * forward_flops(self.config) * speed / 1e12  # forward + backward ~ 3x forward
            peak = f", {tflops / self.peak_tflops:.0%} of the card's bf16 peak" if self.peak_tflops else ""
            line += f", {tflops:.1f} TFLOP/s (analytic count){peak}"
        return line


def bench(config: dict, images: int, device: str, recipe: dict, batch_sizes: list[int],
          compile_modes: list[str | None], progress=None) -> BenchResult:
    """The handout loop once, then the harness for every batch size and compile mode (None: eager), on the
    same model architecture, data and device, in one run; `progress(line)` hears each result as it comes."""
    from reference.vit import ViT

    dev = torch.device(device)
    rng = np.random.default_rng(0)
    side = config.get("img_size", 32)
    x = rng.integers(0, 256, size=(images, side, side, 3), dtype=np.uint8)  # synthetic, CIFAR-10-sized
    y = rng.integers(0, config.get("num_classes", 10), size=images).astype(np.int64)
    torch.manual_seed(0)
    handout = handout_loop_images_per_second(ViT(**config), x, y, dev)
    result = BenchResult(device=str(dev), config=config, images=images, handout_images_per_second=handout, harness={})
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        result.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result.device = f"{dev} ({name})"
    if progress:
        progress(result.describe())
    for batch_size in batch_sizes:
        for mode in compile_modes:
            variant = {**recipe, "batch_size": batch_size, "compile": mode is not None, "compile_mode": mode or "default",
                       "epochs": 1, "val_fraction": 0.0, "attention_images": 0}
            # Warm up once (allocator, kernels, compilation), then measure a second, identical run.
            warm = min(images, 4 * batch_size)
            torch.manual_seed(0)
            train_and_predict(ViT(**config), {"x_train": x[:warm], "y_train": y[:warm], "x_test": x[:8]}, variant,
                              device=device)
            outcome = train_and_predict(ViT(**config), {"x_train": x, "y_train": y, "x_test": x[:8]}, variant,
                                        device=device)
            name = f"batch {batch_size}, {'compile ' + mode if mode else 'eager'}"
            if mode is not None and not outcome.header["compiled"]:
                name += f" (measured eagerly: {'; '.join(outcome.header['notes'])})"
            result.harness[name] = outcome.header["images_per_second"]
            if progress:
                progress(result.variant_line(name))
    return result
