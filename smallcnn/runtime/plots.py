"""Pictures of a run: training curves, confusion matrix, image grids, heatmap overlays.

Figures are `matplotlib.figure.Figure` objects drawn by the Agg renderer, without
pyplot: no display is needed, the caller's pyplot backend and open figures are left
alone, and the run does not pay for importing pyplot (about 0.6 s here). Every picture
is written atomically as PNG.
"""

import io

import numpy as np

from smallcnn.runtime.files import atomic_write


def _figure(**kwargs):
    """A new figure outside pyplot (so never shown, and freed with its last reference)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(figure, path, dpi=100):
    atomic_write(path, lambda temp: figure.savefig(temp, dpi=dpi, format="png",
                                                   bbox_inches="tight"))


def png_bytes(figure, dpi=100):
    """The figure as PNG bytes (for embedding in a report)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png", bbox_inches="tight")
    return buffer.getvalue()


def curves_figure(rows, best_epoch=None, title=None):
    """Loss and accuracy per epoch, train against validation.

    Args:
        rows: history rows (dicts with epoch, phase, loss, accuracy, val_loss, val_accuracy).
        best_epoch: the epoch whose weights the run kept (marked with a dot and a line).
    """
    from matplotlib.ticker import MaxNLocator

    figure = _figure(figsize=(10, 3.8))
    axes = figure.subplots(1, 2)
    epochs = [int(r["epoch"]) for r in rows]
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for key, name, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "-")):
            values = [r.get(key) for r in rows]
            points = [(e, float(v)) for e, v in zip(epochs, values) if v not in (None, "")]
            if points:
                ax.plot(*zip(*points), style, marker="o", markersize=3, label=name)
        finetune = [int(r["epoch"]) for r in rows if r.get("phase") == "finetune"]
        if finetune and finetune[0] > epochs[0]:
            ax.axvline(finetune[0] - 0.5, color="grey", linestyle="--", linewidth=1,
                       label="fine-tuning starts")
        if best_epoch is not None and best_epoch in epochs:
            row = rows[epochs.index(best_epoch)]
            ax.axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1.5,
                       label=f"kept: epoch {best_epoch}")
            if row.get(f"val_{metric}") not in (None, ""):
                ax.plot([best_epoch], [float(row[f"val_{metric}"])], "o", color="tab:green",
                        markersize=8, fillstyle="none")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_figure(matrix, class_names, title="Confusion matrix"):
    """Counts with true classes as rows, predicted classes as columns."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    side = min(12, 2.5 + 0.6 * n)
    figure = _figure(figsize=(side, side * 0.85))
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def grid_figure(tiles, titles=None, columns=8, cmap="viridis", title=None, tile_inches=1.4):
    """A grid of 2-D (colour-mapped) or RGB tiles."""
    count = len(tiles)
    columns = max(1, min(columns, count))
    rows = int(np.ceil(count / columns))
    figure = _figure(figsize=(columns * tile_inches, rows * tile_inches + (0.4 if title else 0)))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < count:
            ax.imshow(tiles[index], cmap=None if np.ndim(tiles[index]) == 3 else cmap)
            if titles is not None:
                ax.set_title(str(titles[index]), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def overlay(image, heatmap, alpha=0.45):
    """An RGB uint8 image with a [0, 1] heatmap drawn over it in the jet colour map."""
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32) / 255
    colours = colormaps["jet"](resized)[..., :3] * 255
    return np.uint8(np.clip((1 - alpha) * image + alpha * colours, 0, 255))

