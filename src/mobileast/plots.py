"""PNG figures: training curves, and the saver every figure of the project goes through.

Every plot exists as a PNG because `dvc plots show` renders HTML that loads its charting
library from the internet. Figures use matplotlib's object API (no pyplot, no global
backend state). Kept apart from mobileast.evaluate so that the training stages, which
plot their history, do not depend on the evaluation code.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mobileast.files import atomic_output


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write `fig` as a PNG, atomically."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_history(csv_path: str | Path, png_path: str | Path, title: str = "training") -> None:
    """Training curves PNG from a per-epoch history CSV (as mobileast.training.engine.fit writes).

    x = the `epoch` column (else the row number); one panel per quantity, with its
    train_/val_ variants on the same axes (e.g. train_loss and val_loss together); empty
    cells (epochs without validation) are left out of their curve.
    """
    history = pd.read_csv(csv_path)
    if history.empty:
        raise ValueError(f"{csv_path}: empty training history")
    x = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
    panels: dict[str, list[str]] = {}
    for column in history.columns:
        if column != "epoch" and pd.api.types.is_numeric_dtype(history[column]):
            panels.setdefault(column.removeprefix("train_").removeprefix("val_"), []).append(column)
    if not panels:
        raise ValueError(f"{csv_path}: no numeric columns to plot besides epoch")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, columns) in zip(axes, panels.items()):
        for column in columns:
            present = history[column].notna()  # val_* only on validated epochs (train.validate_every)
            ax.plot(x[present], history[column][present], marker=".", label=column)
        ax.set_title(name if len(columns) > 1 else columns[0])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(columns) > 1:
            ax.legend()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path)
