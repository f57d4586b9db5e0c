"""PNG figures for evaluation: recall@N curves and query/retrieval grids.

Uses matplotlib's object-oriented API with the Agg canvas directly (no `pyplot`, no global backend
switch), so it works headless and does not disturb a notebook's backend. Files are written
atomically (temp file + rename). Importing this module does not import TensorFlow.
"""

import os

import numpy as np

from tf_netvlad.data.fileio import atomic_path, resolve_paths


def new_figure(width, height):
    """An Agg-backed matplotlib `Figure` of `width` x `height` inches (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Writes `figure` as a PNG to `path` atomically; returns the path as a string."""
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, format="png")
    return os.fspath(path)


def plot_recall_curve(results_or_list, path, labels=None, title="recall@N"):
    """Plots recall@N (%) against N for one or several results dicts (e.g. before/after training).

    Args:
        results_or_list: a dict with `"recall@N"` keys (as returned by `evaluation.evaluate`) or a
            list of them.
        path: output PNG path.
        labels: legend labels, one per results dict (default: their `"split"` or "run i").
        title: figure title.

    Returns:
        `path`.
    """
    from tf_netvlad.evaluation.report import recall_ns

    many = isinstance(results_or_list, (list, tuple))
    runs = list(results_or_list) if many else [results_or_list]
    if not runs:
        raise ValueError("`results_or_list` is empty: nothing to plot.")
    if labels is None:
        labels = [r.get("split") or f"run {i + 1}" for i, r in enumerate(runs)]
    if len(labels) != len(runs):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(runs)} results.")
    figure = new_figure(6.4, 4.4)
    axes = figure.add_subplot(1, 1, 1)
    for run, label in zip(runs, labels):
        ns = recall_ns(run)
        if not ns:
            raise ValueError(
                f"Results {label!r} have no 'recall@N' keys. Received keys {sorted(run)}"
            )
        values = [100.0 * run[f"recall@{n}"] for n in ns]
        axes.plot(ns, values, marker="o", markersize=4, label=str(label))
    axes.set_xlabel("N (number of top database candidates)")
    axes.set_ylabel("recall@N (%)")
    axes.set_ylim(0, 101)
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return save_figure(figure, path)


def _thumbnail(path, size):
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def plot_retrievals(query_paths, retrieved_paths, correct, path, root=None, thumb_size=160):
    """Grid of queries (first column) and their top-k retrieved database images.

    Retrieved images get a green frame when correct (within the positive radius) and a red one
    otherwise; unreadable images are drawn as a grey "missing" cell.

    Args:
        query_paths: Q query image paths (relative to `root` unless absolute).
        retrieved_paths: Q lists of k database image paths, best first.
        correct: bool array-like `(Q, k)`.
        path: output PNG path.
        root: optional image root (one root for queries and database).
        thumb_size: longest side of each thumbnail in pixels.

    Returns:
        `path`.
    """
    correct = np.asarray(correct, dtype=bool)
    num_queries = len(query_paths)
    if num_queries == 0:
        raise ValueError("`query_paths` is empty: nothing to plot.")
    if len(retrieved_paths) != num_queries or correct.ndim != 2 or len(correct) != num_queries:
        raise ValueError(
            "Need one row of retrieved paths and of correct flags per query: "
            f"{num_queries} queries, {len(retrieved_paths)} rows of paths, "
            f"correct shape {correct.shape}."
        )
    k = correct.shape[1]
    if any(len(row) != k for row in retrieved_paths):
        raise ValueError(f"Every row of `retrieved_paths` must have k={k} entries (as `correct`).")

    rows = []
    for q in range(num_queries):
        cells = [(resolve_paths([query_paths[q]], root)[0], "query", "#1f77b4")]
        retrieved = resolve_paths(retrieved_paths[q], root)
        cells += [
            (retrieved[j], f"#{j + 1} {'correct' if correct[q, j] else 'wrong'}",
             "#2ca02c" if correct[q, j] else "#d62728")
            for j in range(k)
        ]
        rows.append(cells)
    return draw_grid(rows, path, thumb_size=thumb_size)


def draw_grid(rows, path, thumb_size=160, fontsize=8, row_height=1.7):
    """Writes a PNG grid of framed thumbnails, one row per list of `(image_path, title, colour)`.

    A file that cannot be read becomes a grey "missing" cell. Returns `path`.
    """
    columns = max(len(row) for row in rows)
    figure = new_figure(1.9 * columns, row_height * len(rows) + 0.3)
    for r, cells in enumerate(rows):
        for col, (image_path, text, color) in enumerate(cells):
            axes = figure.add_subplot(len(rows), columns, r * columns + col + 1)
            image = _thumbnail(image_path, thumb_size)
            if image is None:
                axes.set_facecolor("#bbbbbb")
                axes.text(0.5, 0.5, "missing", ha="center", va="center", transform=axes.transAxes)
            else:
                axes.imshow(image)
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(os.path.basename(os.fspath(image_path))[-28:], fontsize=6)
            for spine in axes.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            axes.set_title(text, fontsize=fontsize, color=color)
    figure.tight_layout()
    return save_figure(figure, path)
