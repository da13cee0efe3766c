"""The Params tables of the docs, rendered from the Params themselves so the docs cannot drift.

Each strategy's page (docs/strategies/<strategy>.md) has its table under "## Params"; docs/choosing.md has
tl_auto's and tl_tournament's under "## Params of tl_auto" and "## Params of tl_tournament"; docs/predict.md has
tl_predict's under "## Params".
``python -m airflow_tl.pipelines.docs [docs folder]`` rewrites them; tests/test_docs.py fails when one is out
of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from airflow_tl.pipelines.params import multi_strategy_params, strategy_params
from airflow_tl.pipelines.predict import predict_params
from airflow_tl.pipelines.strategies import STRATEGIES

HEADER = "| Param | type | default | what it does |\n|---|---|---|---|\n"
_PATHS = re.compile(r"(?<!\S)([('\"]?)(\S*?<\S*>\S*?)([,;)'\"]{0,2})(?=\s|$)")
MULTI = ("auto", "tournament")  # tl_auto and tl_tournament, documented in docs/choosing.md
PREDICT = "predict"  # tl_predict, documented in docs/predict.md
PAGES = (*STRATEGIES, *MULTI, PREDICT)  # every DAG whose Params the docs list


def _table(heading: str) -> re.Pattern[str]:
    return re.compile(rf"({re.escape(heading)}\n\n)(\| Param \|.*?\n)(?=\n|\Z)", re.S)


def params_table(strategy: str) -> str:
    """The Params table of a strategy's DAG, of ``tl_auto``/``tl_tournament`` for ``"auto"``/``"tournament"``, or of
    ``tl_predict`` for ``"predict"``."""
    if strategy == PREDICT:
        params = predict_params()
    elif strategy in MULTI:
        params = multi_strategy_params(strategy)
    else:
        params = strategy_params(STRATEGIES[strategy])
    rows = []
    for name, param in params.items():
        schema = param.schema
        default = f"`{param.value if isinstance(param.value, str) else json.dumps(param.value)}`"
        # Paths such as <prefix>/<class>/ read as HTML tags in rendered Markdown; code spans keep them.
        description = _PATHS.sub(r"\1`\2`\3", param.description).replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(schema)} | {default} | {description} |\n")
    return HEADER + "".join(rows)


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("type") == "array":
        return "list of " + _type(schema["items"]).replace("one of", "any of")
    kinds = schema.get("type", "string")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    nullable = "null" in kinds
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    if bounds and "string" in kinds:  # bounds hold for numbers only: said beside them, not after the string
        kinds = [f"{k} ({', '.join(bounds)})" if k in ("integer", "number") else k for k in kinds]
        bounds = []
    text = " or ".join(k for k in kinds if k != "null") + (" or null" if nullable else "")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def heading(strategy: str) -> str:
    return f"## Params of tl_{strategy}" if strategy in MULTI else "## Params"


def page_path(folder: Path, strategy: str) -> Path:
    if strategy == PREDICT:
        return folder / "predict.md"
    return folder / "choosing.md" if strategy in MULTI else folder / "strategies" / f"{strategy}.md"


def render(page: str, strategy: str) -> str:
    """``page`` with ``strategy``'s Params table replaced by the current one."""
    table = _table(heading(strategy))
    if not table.search(page):
        raise ValueError(f"docs page of {strategy} has no '{heading(strategy)}' table")
    return table.sub(lambda m: m.group(1) + params_table(strategy), page, count=1)


def main(folder: str = "docs") -> int:
    for strategy in PAGES:
        path = page_path(Path(folder), strategy)
        path.write_text(render(path.read_text(), strategy))
        print(f"updated {path} ({strategy})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
