"""The Params tables of docs/strategies/*.md, rendered from the Params themselves so the docs cannot drift.

``python -m airflow_tl.pipelines.docs [docs folder]`` rewrites the table under each page's "## Params"
heading; tests/test_docs.py fails when a page is out of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from airflow_tl.pipelines.params import strategy_params
from airflow_tl.pipelines.strategies import STRATEGIES

HEADER = "| Param | type | default | what it does |\n|---|---|---|---|\n"
_PATHS = re.compile(r"(?<!\S)([('\"]?)(\S*?<\S*>\S*?)([,;)'\"]{0,2})(?=\s|$)")
_TABLE = re.compile(r"(## Params\n\n)(\| Param \|.*?\n)(?=\n|\Z)", re.S)


def params_table(strategy: str) -> str:
    rows = []
    for name, param in strategy_params(STRATEGIES[strategy]).items():
        schema = param.schema
        default = f"`{param.value if isinstance(param.value, str) else json.dumps(param.value)}`"
        # Paths such as <prefix>/<class>/ read as HTML tags in rendered Markdown; code spans keep them.
        description = _PATHS.sub(r"\1`\2`\3", param.description).replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(schema)} | {default} | {description} |\n")
    return HEADER + "".join(rows)


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kinds = schema.get("type", "string")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    nullable = "null" in kinds
    text = " or ".join(k for k in kinds if k != "null") + (" or null" if nullable else "")
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def render(page: str, strategy: str) -> str:
    """``page`` with its Params table replaced by the current one."""
    if not _TABLE.search(page):
        raise ValueError(f"docs page of {strategy} has no '## Params' table")
    return _TABLE.sub(lambda m: m.group(1) + params_table(strategy), page, count=1)


def main(folder: str = "docs/strategies") -> int:
    for strategy in STRATEGIES:
        path = Path(folder) / f"{strategy}.md"
        path.write_text(render(path.read_text(), strategy))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
