"""The pictures of a student's training run: the training curve and the trained model's attention maps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from grader.checks.context import TrainingPictures  # noqa: E402
from grader.render.figures import to_png, training_curve_png  # noqa: E402
from reference.attention_maps import attention_rollout, cls_attention, handout_heatmap, plot_overlay, upsample  # noqa: E402


def training_pictures(training: TrainingPictures) -> dict[str, bytes]:
    """The training curve and the trained model's attention maps."""
    pictures = {"training.png": training_curve_png(training.history),
                "attention.png": attention_png(training.images, training.attention)}
    return {name: png for name, png in pictures.items() if png}


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
