"""Callbacks for the test DAGs: Airflow keeps no record of why a task failed, so tests write one."""

from __future__ import annotations

import json
import os


def record_failure(context) -> None:
    error = context.get("exception")
    with open(os.environ["AIRFLOW_TL_TEST_FAILURES"], "a") as fh:
        record = {"task_id": context["ti"].task_id, "type": type(error).__name__, "message": str(error)}
        record["mro"] = [c.__name__ for c in type(error).__mro__]
        fh.write(json.dumps(record) + "\n")
