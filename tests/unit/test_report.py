"""The evaluation report: PNG plots that decode, and an HTML page that is self-contained and escaped."""

from __future__ import annotations

import base64
import io
import re

import pytest
import torch
from PIL import Image

from airflow_tl.evaluation.metrics import Metrics, compute_metrics
from airflow_tl.evaluation.report import render_plots, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
HISTORY = [
    {"epoch": 1, "train_loss": 1.52, "train_accuracy": 0.41, "val_loss": 1.31, "val_accuracy": 0.55, "lr": 0.001},
    {"epoch": 2, "train_loss": 1.10, "train_accuracy": 0.60, "val_loss": 1.05, "val_accuracy": 0.66, "lr": 0.001},
    {"epoch": 3, "train_loss": 0.90, "val_loss": 0.98, "val_accuracy": 0.70},
]


def make_metrics(names: list[str]) -> Metrics:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    return compute_metrics(probs, torch.tensor([0, 1, 2, 1]), names)


@pytest.fixture(scope="module")
def metrics() -> Metrics:
    return make_metrics(["cat", "dog", EVIL])


@pytest.fixture(scope="module")
def plots(metrics: Metrics) -> dict[str, bytes]:
    return render_plots(HISTORY, metrics)


def decode(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_plots_are_pngs_of_a_sensible_size(plots: dict[str, bytes]) -> None:
    assert set(plots) == {"curves.png", "confusion.png"}
    for png in plots.values():
        width, height = decode(png).size
        assert 300 <= width <= 1500 and 300 <= height <= 1300
        assert len(png) < 500_000


def test_empty_history_has_no_curves(metrics: Metrics) -> None:
    plots = render_plots([], metrics)
    assert set(plots) == {"confusion.png"}
    decode(plots["confusion.png"])


def test_history_rows_with_missing_keys_still_plot(metrics: Metrics) -> None:
    history = [{"epoch": 1, "train_loss": 1.0}, {"val_accuracy": 0.5}, {"epoch": 3, "val_loss": None}, {}]
    decode(render_plots(history, metrics)["curves.png"])


def test_many_classes_plot_without_cell_numbers() -> None:
    c = 31
    probs = torch.softmax(torch.randn(93, c, generator=torch.Generator().manual_seed(0)), 1)
    labels = torch.arange(93) % c
    metrics = compute_metrics(probs, labels, [f"class {i}" for i in range(c)])
    decode(render_plots([], metrics)["confusion.png"])


def test_plotting_leaves_no_pyplot_figures_behind(metrics: Metrics) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_plots(HISTORY, metrics)
    assert plt.get_fignums() == before


@pytest.fixture(scope="module")
def page(metrics: Metrics, plots: dict[str, bytes]) -> str:
    facts = {"model URI": "s3://models/zoo/cats/v3/model.json", "promoted": "no", EVIL: f"strategy {EVIL}"}
    return render_report(title=f"Evaluation {EVIL}", metrics=metrics, plots=plots, facts=facts).decode("utf-8")


def test_page_embeds_every_plot_byte_for_byte(page: str, plots: dict[str, bytes]) -> None:
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(data) for data in embedded) == sorted(plots.values())


def test_page_loads_nothing_from_elsewhere(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<link" not in page


def test_page_escapes_facts_titles_and_class_names(page: str) -> None:
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Evaluation &lt;script&gt;" in page
    assert "s3://models/zoo/cats/v3/model.json" in page


def test_page_shows_headline_and_per_class_numbers(page: str, metrics: Metrics) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert f"{metrics.accuracy:.4f}" in page
    assert f"{metrics.macro_f1:.4f}" in page
    assert f"{metrics.log_loss:.4f}" in page
    dog = metrics.per_class["dog"]
    assert f'<td>dog</td><td class="num">{dog["precision"]:.4f}</td>' in page
    assert page.count("<tr><td>") == len(metrics.class_names)


def test_page_without_plots_has_no_images(metrics: Metrics) -> None:
    page = render_report(title="t", metrics=metrics, plots={}, facts={}).decode("utf-8")
    assert "<img" not in page


def test_a_regularisation_path_is_drawn_against_the_penalty_with_the_choice_marked(metrics: Metrics) -> None:
    """A head fitted on features has no epochs: its history has one row per L2 penalty, strongest first."""
    from airflow_tl.evaluation.report import _curves_figure

    path = [
        {"l2": 1.0, "train_loss": 0.9, "train_accuracy": 0.7, "val_loss": 0.95, "val_accuracy": 0.68},
        {"l2": 0.1, "train_loss": 0.4, "train_accuracy": 0.9, "val_loss": 0.5, "val_accuracy": 0.85, "chosen": True},
        {"l2": 0.01, "train_loss": 0.1, "train_accuracy": 1.0, "val_loss": 0.7, "val_accuracy": 0.8},
    ]
    figure = _curves_figure(path)
    for ax in figure.axes:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "L2 penalty"
        assert ax.xaxis_inverted()  # strong to weak, left to right, as fitted
        curves = [line for line in ax.lines if line.get_label() != "chosen"]
        assert [list(line.get_xdata()) for line in curves] == [[1.0, 0.1, 0.01]] * 2
        (marker,) = (line for line in ax.lines if line.get_label() == "chosen")
        assert list(marker.get_xdata()) == [0.1, 0.1]
    decode(render_plots(path, metrics)["curves.png"])
    epochs = _curves_figure(HISTORY)
    assert all(ax.get_xscale() == "linear" and ax.get_xlabel() == "epoch" for ax in epochs.axes)
