"""Rebuild the example submissions made from the handout (run after editing the handout source).

s1004: the Japanese solution notebook as `vitgrade assign` builds it.
s1005: the English solution notebook whose 課題1 diagram is a picture file beside it, zipped together
       (how a student hands in a drawing kept outside the notebook).

Usage: python scripts/build_examples.py
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed copy
from assignments import assignment_dir  # noqa: E402
from grader.handout import build_notebook  # noqa: E402

EXAMPLES = assignment_dir() / "examples"
DIAGRAM_ANSWER = "**Answer to Task 1 (1):** my drawing, with the shape after every step.\n\n![diagram](diagram.png)"
STEPS = [("image", "(B, 3, 32, 32)"), ("split into 4x4 patches", "(B, 64, 48)"),
         ("patch embedding Linear(48, 512)", "(B, 64, 512)"), ("prepend the class token", "(B, 65, 512)"),
         ("add the position embedding", "(B, 65, 512)"),
         ("6 x [LN, SelfAttention, +, LN, FNN, +]", "(B, 65, 512)"),
         ("LayerNorm, take the class token", "(B, 512)"), ("head Linear(512, 10)", "(B, 10)")]


def diagram_png() -> bytes:
    """The network as a column of boxes with the shape beside each."""
    fig, ax = plt.subplots(figsize=(6, 7), dpi=100)
    ax.set_axis_off()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, len(STEPS) * 1.2)
    for i, (step, shape) in enumerate(STEPS):
        y = (len(STEPS) - 1 - i) * 1.2 + 0.3
        ax.add_patch(plt.Rectangle((0.2, y), 6.3, 0.7, fill=False, linewidth=1.5))
        ax.text(3.35, y + 0.35, step, ha="center", va="center", fontsize=9)
        ax.text(6.8, y + 0.35, shape, va="center", fontsize=9, family="monospace")
        if i:
            ax.annotate("", xy=(3.35, y + 0.7), xytext=(3.35, y + 1.2), arrowprops={"arrowstyle": "->"})
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def s1005_notebook() -> nbformat.NotebookNode:
    nb = build_notebook("en", "solution")
    cell = next(c for c in nb.cells if "task1-diagram" in c.metadata.get("tags", []))
    cell.source = DIAGRAM_ANSWER
    return nb


def main() -> None:
    nbformat.write(build_notebook("ja", "solution"), EXAMPLES / "s1004_handout_ja_filled.ipynb")
    with zipfile.ZipFile(EXAMPLES / "s1005_diagram_file.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (("vit_cifar10_en.ipynb", nbformat.writes(s1005_notebook())), ("diagram.png", diagram_png())):
            # A fixed date: rebuilding without a change leaves the archive byte for byte the same.
            archive.writestr(zipfile.ZipInfo(f"s1005/{name}", date_time=(2026, 1, 1, 0, 0, 0)), data)
    print(f"wrote {EXAMPLES / 's1004_handout_ja_filled.ipynb'} and {EXAMPLES / 's1005_diagram_file.zip'}")


if __name__ == "__main__":
    main()
