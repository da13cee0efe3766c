"""The docs stay true to the code: each DAG's page holds the Params table its Params render to."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_tl.pipelines.docs import PAGES, page_path, params_table, render

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("strategy", PAGES)
def test_each_dags_page_lists_its_params(strategy):
    path = page_path(DOCS, strategy)
    page = path.read_text()
    assert params_table(strategy) in page, f"{path} is out of date: run python -m airflow_tl.pipelines.docs"
    assert render(page, strategy) == page


def test_rendering_keeps_paths_readable_in_markdown():
    table = params_table("partial_freeze")
    assert "`<prefix>/<class>/<image>`" in table and "| `freeze_layers` | integer (≥ 0) or string | `3` |" in table
