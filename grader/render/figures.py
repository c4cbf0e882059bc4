"""Charts for reports (the training curve) and for the class summary (scores, pass rates)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
