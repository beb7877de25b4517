"""Matplotlib figures as inline ``<img>`` elements (base64 PNG data URIs): the report works offline.

Every function returns HTML; figures are closed once rendered, so a long report does not
keep hundreds of them alive.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, css_class: str = "plot") -> str:
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="{png_data_uri(png)}">'


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, ylabel: str,
               xlabel: str = "epoch") -> str:
    """One line per named series of (x, y) points; non-finite y values are left out, and a chart
    with nothing to draw says so."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    drawn = 0
    for name, points in series.items():
        kept = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        if kept:
            xs, ys = zip(*kept)
            ax.plot(xs, ys, marker="o" if len(kept) < 30 else None, markersize=3, label=name)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if all(float(x).is_integer() for points in series.values() for x, _ in points):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5" ticks
    ax.grid(alpha=0.3)
    if drawn > 1:
        ax.legend(fontsize="small")
    return img(figure_png(fig), title)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, xlabel: str, ylabel: str) -> str:
    """A square count matrix with its counts written in the cells (up to 20 classes)."""
    n = len(labels)
    size = min(3.0 + 0.45 * n, 12.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=labels, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n <= 20:
        high = matrix.max() if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if count > high / 2 else "black")
    return img(figure_png(fig), title)


def thumbnail(pixels: np.ndarray, alt: str) -> str:
    """An image (H, W, C) in [0, 1] at its own size; CSS scales it up without smoothing."""
    buf = io.BytesIO()
    gray = pixels.shape[2] == 1
    plt.imsave(buf, pixels[:, :, 0] if gray else pixels, format="png", cmap="gray" if gray else None,
               vmin=0.0, vmax=1.0)
    return img(buf.getvalue(), alt, "thumb")


def sequence_plot(steps: np.ndarray, alt: str) -> str:
    """A small line plot of a sequence's values (T, F): one line per feature."""
    fig, ax = plt.subplots(figsize=(2.4, 1.2))
    ax.plot(steps, linewidth=0.8)
    ax.tick_params(labelsize=6)
    return img(figure_png(fig), alt, "small")


def spectrogram(samples: np.ndarray, sample_rate: int, alt: str) -> str:
    """A small spectrogram of mono audio samples (N,)."""
    fig, ax = plt.subplots(figsize=(2.4, 1.4))
    ax.specgram(samples, Fs=sample_rate, NFFT=min(256, max(16, len(samples) // 8)), cmap="magma")
    ax.set_xlabel("s", fontsize=6)
    ax.set_ylabel("Hz", fontsize=6)
    ax.tick_params(labelsize=6)
    return img(figure_png(fig), alt, "small")
