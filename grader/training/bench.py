"""`vitgrade bench`: the harness against the handout's training loop, same model, same device, one run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import median

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.training.recipe import TrainingRecipe
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


def handout_loop_images_per_second(model: nn.Module, x: np.ndarray, y: np.ndarray,
                                   device: torch.device) -> tuple[float, float]:
    """The handout's loop: torchvision ToTensor + Normalize per image, DataLoader batch 100, SGD, fp32.
    Returns images/s and the share of the time spent waiting for the DataLoader's batches."""
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
    seen, waiting = 0, 0.0
    batches = iter(loader)
    started = time.perf_counter()
    while True:
        asked = time.perf_counter()
        try:
            inputs, labels = next(batches)
        except StopIteration:
            break
        waiting += time.perf_counter() - asked
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # the handout accumulates loss.item() every step, which synchronises
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seen / seconds, waiting / seconds


@dataclass
class BenchResult:
    """Images/s of every run: the handout loop and each harness variant, measured in alternation."""

    device: str
    config: dict
    images: int
    handout: list[float] = field(default_factory=list)
    handout_data_share: list[float] = field(default_factory=list)  # of the handout loop's time
    harness: dict[str, list[float]] = field(default_factory=dict)  # variant (batch size, compile mode) -> runs
    peak_tflops: float | None = None
    profile: str = ""  # operator table of one harness run, when asked for

    def describe(self) -> str:
        lines = [f"device {self.device}, config {self.config or 'default'}, {self.images} training images per loop, "
                 f"median of {len(self.handout)} run(s) (min-max)",
                 f"handout loop (DataLoader, ToTensor+Normalize, batch 100, fp32): {_spread(self.handout)} images/s, "
                 f"{median(self.handout_data_share):.0%} of its time waiting for data"]
        base = median(self.handout)
        for name, runs in self.harness.items():
            speed = median(runs)
            line = f"harness {name}: {_spread(runs)} images/s, {speed / base:.1f}x the handout loop"
            if self.device.startswith("cuda"):
                tflops = 3 * forward_flops(self.config) * speed / 1e12  # forward + backward ~ 3x forward
                peak = f", {tflops / self.peak_tflops:.0%} of the card's bf16 peak" if self.peak_tflops else ""
                line += f", {tflops:.1f} TFLOP/s (analytic count){peak}"
            lines.append(line)
        if self.profile:
            lines.append(self.profile)
        return "\n".join(lines)


def operator_table(run, device: torch.device, rows: int = 15) -> str:
    """torch.profiler's table of the operators `run()` spends most time in (on CUDA: time on the device)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        run()
    return prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=rows)


def _spread(runs: list[float]) -> str:
    return f"{median(runs):,.0f} ({min(runs):,.0f}-{max(runs):,.0f})" if len(runs) > 1 else f"{runs[0]:,.0f}"


def bench(config: dict, images: int, device: str, recipe: dict, batch_sizes: list[int],
          compile_modes: list[str | None], repeats: int = 3, fused_attention: bool = False,
          profile: bool = False, progress=None) -> BenchResult:
    """The handout loop and the harness for every batch size and compile mode (None: eager) on the same model
    architecture, data and device, in one run: after a warm-up of each, `repeats` rounds that measure them in
    turn, so drift on a busy machine hits all alike. `fused_attention` runs the harness's model with the
    reference's fused attention path (the same function; a student's model has its own attention, so
    this bounds what the harness could do, it is not what grading gets). `profile` adds the operator table
    of one more run of the first harness variant (where the time goes). `progress(line)` hears each round.
    `recipe` holds the TrainingRecipe settings every variant shares (each sets its batch size, epochs and
    compilation)."""
    from reference.vit import ViT, set_fused_attention

    dev = torch.device(device)
    rng = np.random.default_rng(0)
    side = config.get("img_size", 32)
    x = rng.integers(0, 256, size=(images, side, side, 3), dtype=np.uint8)  # synthetic, CIFAR-10-sized
    y = rng.integers(0, config.get("num_classes", 10), size=images).astype(np.int64)
    result = BenchResult(device=str(dev), config=config, images=images)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        result.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result.device = f"{dev} ({name})"

    def handout() -> None:
        torch.manual_seed(0)
        speed, data_share = handout_loop_images_per_second(ViT(**config), x, y, dev)
        result.handout.append(speed)
        result.handout_data_share.append(data_share)

    def harness(variant: TrainingRecipe, count: int):
        torch.manual_seed(0)
        model = ViT(**config)
        set_fused_attention(model, fused_attention)
        return train_and_predict(model, {"x_train": x[:count], "y_train": y[:count], "x_test": x[:8]}, variant,
                                 device=device)

    handout_loop_images_per_second(ViT(**config), x[:500], y[:500], dev)  # warm-up: device, kernels
    variants = {}
    for batch_size in batch_sizes:
        for mode in compile_modes:
            variant = TrainingRecipe.from_table({**recipe, "batch_size": batch_size, "compile": mode is not None,
                                                 "compile_mode": mode or "default", "epochs": 1, "val_fraction": 0.0,
                                                 "attention_images": 0}, "bench recipe")
            warm = harness(variant, min(images, 4 * batch_size))  # warm-up: allocator, kernels, compilation
            name = f"batch {batch_size}, {'compile ' + mode if mode else 'eager'}"
            name += ", fused attention" if fused_attention else ""
            if mode is not None and not warm.header["compiled"]:
                name += f" (measured eagerly: {'; '.join(warm.header['notes'])})"
            variants[name] = variant
            result.harness[name] = []
    for round_number in range(1, repeats + 1):
        handout()
        for name, variant in variants.items():
            result.harness[name].append(harness(variant, images).header["images_per_second"])
        if progress:
            progress(f"round {round_number}/{repeats}: handout {result.handout[-1]:,.0f}, " + ", ".join(
                f"{name} {runs[-1]:,.0f}" for name, runs in result.harness.items()) + " images/s")
    if profile:
        name, variant = next(iter(variants.items()))
        table = operator_table(lambda: harness(variant, min(images, 20 * variant.batch_size)), dev)
        result.profile = f"where harness {name} spends its time (torch.profiler, top operators by self time):\n{table}"
    return result
