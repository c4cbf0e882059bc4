"""The training harness: one fast, device-agnostic trainer for the reference and for student models.

The whole dataset lives on the device as one uint8 tensor; augmentation (random crop with
padding, horizontal flip) and normalisation run on the device; large batches; autocast (bf16 where
supported, fp16 with a gradient scaler otherwise on CUDA, fp32 on CPU); optional torch.compile with
an eager fallback; evaluation in large batches. This file is also copied into the sandbox, so it
imports only torch, numpy, the standard library and recipe.py (copied beside it). It never receives
test labels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:  # grader.training.trainer, in the parent
    from grader.training.recipe import CIFAR_MEAN, CIFAR_STD, TrainingRecipe
else:  # the sandbox's copy, beside its copy of recipe.py (the grader package is not importable there)
    from recipe import CIFAR_MEAN, CIFAR_STD, TrainingRecipe


@dataclass
class TrainOutcome:
    header: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


def cpu_has_bf16_units() -> bool:
    """True on CPUs with native bf16 matrix instructions (Intel AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def autocast_dtype(device: torch.device, cpu_bf16: bool = True) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 otherwise on CUDA. On the CPU, fp32, except bf16 on CPUs
    with native bf16 units (about 1.6x faster for the quick recipe there); the recipe's cpu_bf16=false
    turns that off."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and cpu_has_bf16_units() else None


class DeviceData:
    """Images as one uint8 (N, 3, H, W) tensor on the device, augmented and normalised there."""

    def __init__(self, images_nhwc: np.ndarray, device: torch.device, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.images = torch.from_numpy(np.ascontiguousarray(images_nhwc)).to(device).permute(0, 3, 1, 2).contiguous()
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor, augment: bool, generator: torch.Generator | None = None,
              pad: int = 4) -> torch.Tensor:
        x = self.images[index]  # (B, 3, H, W) uint8
        if augment:
            x = self._crop_and_flip(x, pad, generator)
        return (x.float() - self.mean) / self.std

    @staticmethod
    def _crop_and_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
        """Random crop with zero padding (as RandomCrop(32, padding=4)) and horizontal flip, per image."""
        b, c, h, w = x.shape
        dev = x.device
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p), still uint8
        oy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
        flip = torch.rand(b, 1, 1, device=dev, generator=generator) < 0.5
        cols = torch.arange(w, device=dev).view(1, 1, w)
        cols = torch.where(flip, w - 1 - cols, cols)  # flipping = reading columns backwards
        rows = torch.arange(h, device=dev).view(1, h, 1)
        flat = (oy + rows) * (w + 2 * pad) + (ox + cols)  # (B, H, W) positions in the padded image
        flat = flat.view(b, 1, h * w).expand(b, c, h * w)
        # One gather over the flattened padded image: much cheaper than 4-D fancy indexing.
        return padded.view(b, c, -1).gather(2, flat).view(b, c, h, w)


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    return base


def make_optimizer(model: nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.decay)
    # The fused CUDA kernel updates every parameter in a few launches instead of several per tensor.
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.decay, fused=fused)


def training_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, amp: torch.dtype | None, recipe: TrainingRecipe) -> torch.Tensor:
    """One optimisation step; returns the detached loss (no synchronisation with the device)."""
    with torch.autocast(inputs.device.type, dtype=amp, enabled=amp is not None):
        logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=float(recipe.label_smoothing))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def predict(model: nn.Module, data: DeviceData, batch_size: int, amp: torch.dtype | None) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)), device=data.images.device)
        with torch.autocast(data.images.device.type, dtype=amp, enabled=amp is not None):
            out.append(model(data.batch(index, augment=False)).float())
    return torch.cat(out)


def train_and_predict(model: nn.Module, arrays: dict, recipe: TrainingRecipe | dict, device: str = "cpu",
                      progress: bool = False) -> TrainOutcome:
    """Train `model` on arrays x_train/y_train (uint8 NHWC, int) and predict classes of x_test.

    `recipe` is a TrainingRecipe, or a dict of its settings (validated the same way; ValueError names
    a bad key). `progress` shows a tqdm bar with each epoch's loss, accuracy and images/s (never in the
    sandbox, whose output is the student's).
    """
    recipe = TrainingRecipe.from_table(recipe)
    dev = torch.device(device)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator(device=dev).manual_seed(recipe.seed)
    model = model.to(device=dev, dtype=torch.float32)
    x_all, y_all = arrays["x_train"], torch.from_numpy(arrays["y_train"].astype(np.int64)).to(dev)
    n_val = int(len(x_all) * float(recipe.val_fraction))
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(recipe.seed))
    val_idx, train_idx = order[:n_val].numpy(), order[n_val:].numpy()
    # Normalisation: CIFAR-10's statistics unless the recipe names others (the handout uses 0.5 and 0.5).
    stats = {"mean": tuple(recipe.mean), "std": tuple(recipe.std)}
    train, val = DeviceData(x_all[train_idx], dev, **stats), DeviceData(x_all[val_idx], dev, **stats)
    y_train, y_val = y_all[torch.from_numpy(train_idx).to(dev)], y_all[torch.from_numpy(val_idx).to(dev)]
    test = DeviceData(arrays["x_test"], dev, **stats)

    amp = autocast_dtype(dev, recipe.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    optimizer = make_optimizer(model, recipe)
    # torch.compile is lazy: it fails (if at all) at the first call, so the first step falls back to eager.
    step_model = torch.compile(model, mode=recipe.compile_mode) if recipe.compile else model
    notes = []
    batch_size = recipe.batch_size
    steps_per_epoch = max(1, len(train) // batch_size)
    # A recipe counts epochs, but learning needs optimizer steps: on a small dataset the same epochs
    # are too few steps to learn anything (1,400 images x 4 epochs = 40 steps), so `min_steps`
    # adds epochs until the run takes at least that many steps.
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch))
    total_steps = epochs * steps_per_epoch
    warmup = int(float(recipe.warmup_epochs) * steps_per_epoch)
    max_seconds = math.inf if recipe.max_seconds is None else float(recipe.max_seconds)
    history, images, stopped = [], 0, ""
    bar = _progress_bar(epochs * steps_per_epoch * batch_size) if progress else None
    started = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), device=dev, generator=generator)
        losses = []
        for i in range(steps_per_epoch):
            index = perm[i * batch_size : (i + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, recipe.lr, recipe.schedule)
            inputs = train.batch(index, recipe.augment, generator)
            try:
                loss = training_step(step_model, inputs, y_train[index], optimizer, scaler, amp, recipe)
            except torch.OutOfMemoryError:
                stopped = (f"out of {dev.type.upper()} memory at batch size {batch_size} in epoch {epoch + 1}; "
                           f"the model or its activations are too large for the device")
                break
            except Exception as exc:
                if step > 0 or step_model is model:
                    raise
                notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); trained eagerly")
                step_model = model
                loss = training_step(step_model, inputs, y_train[index], optimizer, scaler, amp, recipe)
            losses.append(loss)
            images += len(index)
            step += 1
            if bar is not None:
                bar.update(len(index))
        if stopped:
            break
        train_loss = float(torch.stack(losses).mean())
        if not math.isfinite(train_loss):
            stopped = f"the training loss became {train_loss} in epoch {epoch + 1}"
            break
        val_loss = val_acc = float("nan")
        if len(val):
            logits = predict(model, val, 4 * batch_size, amp)
            val_loss = float(F.cross_entropy(logits, y_val))
            val_acc = float((logits.argmax(1) == y_val).float().mean())
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc})
        if bar is not None:  # once per epoch: reading the loss synchronises with the device
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.1%}",
                            images_s=f"{images / (time.perf_counter() - started):,.0f}")
        if time.perf_counter() - started > max_seconds:
            stopped = f"stopped after {epoch + 1} epochs: the time budget of {max_seconds:.0f} s was used up"
            break
    if bar is not None:
        bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    try:
        predictions = predict(model, test, 4 * batch_size, amp).argmax(1).cpu().numpy().astype(np.int64)
    except torch.OutOfMemoryError:
        stopped = stopped or f"out of {dev.type.upper()} memory while predicting the test images"
        predictions = np.full(len(test), -1, dtype=np.int64)  # no class: counts as wrong
    arrays_out = {"predictions": predictions}
    arrays_out.update(attention_of(model, test, recipe.attention_images))
    header = {"history": history, "epochs_run": len(history), "train_seconds": seconds,
              "images_per_second": images / seconds if seconds else 0.0, "device": str(dev),
              "autocast": str(amp).replace("torch.", "") if amp else "float32", "stopped": stopped,
              "compiled": step_model is not model, "notes": notes}
    return TrainOutcome(header, arrays_out)


def _progress_bar(total: int):
    from tqdm.auto import tqdm  # imported here: the sandbox's copy of this file runs without tqdm

    return tqdm(total=total, unit="img", unit_scale=True, desc="training", dynamic_ncols=True)


@torch.no_grad()
def attention_of(model: nn.Module, data: DeviceData, count: int) -> dict:
    """Per-layer attention weights (B, heads, N, N) of the first `count` test images: every submodule
    that stores a 4-D `attn_weights` (as the handout's SelfAttention does), in registration order."""
    if count <= 0:
        return {}
    model.eval()
    index = torch.arange(min(count, len(data)), device=data.images.device)
    model(data.batch(index, augment=False))
    found = {}
    for module in model.modules():
        weights = getattr(module, "attn_weights", None)
        if isinstance(weights, torch.Tensor) and weights.dim() == 4:
            found[f"attention:{len(found)}"] = weights.float().cpu().numpy()
    return found
