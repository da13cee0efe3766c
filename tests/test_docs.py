"""The docs stay true to the code: each strategy page's Params table is the one the DAG's Params render to."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_tl.pipelines.docs import MULTI, page_path, params_table, render
from airflow_tl.pipelines.strategies import STRATEGIES

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("strategy", [*STRATEGIES, *MULTI])
def test_each_dags_page_lists_its_params(strategy):
    path = page_path(DOCS, strategy)
    page = path.read_text()
    assert params_table(strategy) in page, f"{path} is out of date: run python -m airflow_tl.pipelines.docs"
    assert render(page, strategy) == page


def test_rendering_keeps_paths_readable_in_markdown():
    table = params_table("partial_freeze")
    assert "`<prefix>/<class>/<image>`" in table and "| `freeze_layers` | integer (≥ 0) or string | `3` |" in table
