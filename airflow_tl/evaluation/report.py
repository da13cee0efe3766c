"""The evaluation report: training curves, a confusion matrix, and one self-contained HTML page.

The page embeds its images as data URIs and loads nothing from anywhere, so it can be opened
straight from S3 or an Airflow log, offline. matplotlib is imported inside the functions and used
without pyplot: no global backend is set and no figure outlives the call.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from airflow_tl.evaluation.metrics import Metrics

DPI = 100
# Beyond this many classes the numbers in the cells would overlap; the colours still tell the story.
MAX_ANNOTATED_CLASSES = 30
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def render_plots(history: list[dict[str, Any]], metrics: Metrics) -> dict[str, bytes]:
    """PNG images by file name: ``curves.png`` (omitted without history) and ``confusion.png``."""
    plots = {}
    if history:
        plots["curves.png"] = _curves_png(history)
    plots["confusion.png"] = _confusion_png(metrics.confusion, metrics.class_names)
    return plots


def _curves_png(history: list[dict[str, Any]]) -> bytes:
    """The training curves as PNG bytes."""
    return _png(_curves_figure(history))


def _curves_figure(history: list[dict[str, Any]]) -> Any:
    """Loss on the left, accuracy on the right: per epoch, or per L2 penalty for a head fitted on features.

    A head fitted to convergence (``training.head``) has no epochs; its history is the regularisation path,
    one row per penalty, strongest first. It is drawn left to right as fitted, on a log scale, with the
    chosen penalty marked.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = any("l2" in row for row in history) and not any("epoch" in row for row in history)
    x_key = "l2" if path else "epoch"
    chosen = [row["l2"] for row in history if path and row.get("chosen")]
    fig = Figure(figsize=(7, 3.5), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, keys, ylabel in (
        (loss_ax, ("train_loss", "val_loss"), "loss"),
        (acc_ax, ("train_accuracy", "val_accuracy"), "accuracy"),
    ):
        for key in keys:
            xs, values = _series(history, key, x_key)
            if values:
                ax.plot(xs, values, marker="o", label=key.replace("_", " "))
        if path:
            ax.set_xscale("log")
            ax.invert_xaxis()  # strong to weak, as the path was fitted
            ax.set_xlabel("L2 penalty")
            for l2 in chosen:
                ax.axvline(l2, color="grey", linestyle="--", label="chosen")
        else:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return fig


def _series(history: list[dict[str, Any]], key: str, x_key: str = "epoch") -> tuple[list[float], list[float]]:
    """x and values of ``key`` over the rows that have it; a row's position stands in for a missing x."""
    xs, values = [], []
    for position, row in enumerate(history, start=1):
        value = row.get(key)
        if isinstance(value, int | float):
            xs.append(row.get(x_key, position))
            values.append(float(value))
    return xs, values


def _confusion_png(confusion: list[list[int]], class_names: list[str]) -> bytes:
    """A heat map of counts, rows true and columns predicted."""
    from matplotlib.figure import Figure

    c = len(class_names)
    side = min(4 + 0.3 * c, 12)
    fig = Figure(figsize=(side + 1, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= MAX_ANNOTATED_CLASSES:
        peak = max((max(row) for row in confusion), default=0)
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                # White on the dark end of the colour map, black on the light end.
                colour = "white" if count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=10 if c <= 10 else 7)
    return _png(fig)


def _png(fig: Any) -> bytes:
    """Render a Figure to PNG bytes with the Agg canvas, then drop the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    fig.clear()
    return buffer.getvalue()


def render_report(*, title: str, metrics: Metrics, plots: dict[str, bytes], facts: dict[str, str]) -> bytes:
    """A self-contained UTF-8 HTML page: facts, headline metrics, per-class table and the plots."""
    e = html.escape
    headline = {"test images": str(metrics.n)} | {
        name.replace("_", " "): f"{value:.4f}" for name, value in metrics.summary().items() if name != "n"
    }
    images = "\n".join(
        f'<h2>{e(name)}</h2>\n<img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in plots.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{e(title)}</h1>
{_key_value_table(facts)}
<h2>Metrics</h2>
{_key_value_table(headline)}
<h2>Per class</h2>
{_per_class_table(metrics)}
{images}
</body>
</html>
"""
    return page.encode("utf-8")


def _key_value_table(rows: dict[str, str]) -> str:
    """A two-column table of escaped keys and values."""
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _per_class_table(metrics: Metrics) -> str:
    """Precision, recall, F1 and support of each class, in class order."""
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    rows = []
    for name in metrics.class_names:
        stats = metrics.per_class[name]
        cells = "".join(f'<td class="num">{stats[k]:.4f}</td>' for k in ("precision", "recall", "f1"))
        rows.append(f'<tr><td>{html.escape(name)}</td>{cells}<td class="num">{stats["support"]}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"
