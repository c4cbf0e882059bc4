"""Pictures for reports: the training curve and attention maps of the student's trained model."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reference.attention_maps import attention_rollout, cls_attention, handout_heatmap, plot_overlay, upsample  # noqa: E402


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def training_curve_png(history: list[dict]) -> bytes | None:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(8, 3))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training loss")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], marker="o", color="tab:green")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.set_ylim(0, 1)
    fig.suptitle("Training of your model by the grader")
    return to_png(fig)


def attention_png(images_nhwc: np.ndarray, attentions: list[np.ndarray]) -> bytes | None:
    """Rows: test images; columns: image, the handout's heatmap, CLS attention (last layer), rollout."""
    if not attentions or len(images_nhwc) == 0:
        return None
    weights = [torch.from_numpy(a).double() for a in attentions]
    n = min(len(images_nhwc), weights[0].shape[0])
    try:
        maps = {"handout heatmap\n(layer 0)": handout_heatmap(weights),
                "class-token attention\n(last layer)": cls_attention(weights),
                "attention rollout\n(all layers)": attention_rollout(weights)}
    except (ValueError, RuntimeError):
        return None  # attention of an unusual shape: no picture rather than a wrong one
    size = images_nhwc.shape[1]
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 2.2 * n), squeeze=False)
    for row in range(n):
        image = images_nhwc[row] / 255.0
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("test image\n" if row == 0 else "", fontsize=9)
        axes[row, 0].axis("off")
        for col, (title, grid) in enumerate(maps.items(), start=1):
            plot_overlay(axes[row, col], image, upsample(grid[row : row + 1], size)[0], title if row == 0 else "")
    return to_png(fig)


def score_histogram_png(scores: list[float], max_score: float) -> bytes | None:
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=min(20, max(5, len(scores) // 3)), range=(0, max(max_score, 1)), color="tab:blue",
            edgecolor="white")  # adjacent bins stay apart
    ax.set_xlabel("score")
    ax.set_ylabel("students")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of students
    ax.set_title("Score distribution (graded submissions)")
    return to_png(fig)


def pass_rate_png(rates: dict[str, float]) -> bytes | None:
    if not rates:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rates) + 1))
    names = list(rates)[::-1]
    ax.barh(names, [rates[n] for n in names], color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of graded submissions that passed")
    ax.set_title("Pass rate per check: which mistakes the class made")
    return to_png(fig)
