"""A task's last error, kept in S3 beside its run outputs, so a later task (a tournament) can say why it failed.

Airflow keeps the error in the task log only, which other tasks cannot read. ``record_failure`` is an
``on_failure_callback``: it runs once a task has failed for good (not on a try that will be retried).
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"


def error_uri(work_uri: str, dag_id: str, run_id: str, task_id: str) -> str:
    """Where ``record_failure`` keeps the error of ``task_id`` in one DAG run."""
    from airflow_tl.uris import slug

    return f"{work_uri.rstrip('/')}/runs/{dag_id}/{slug(run_id)}/{task_id}/{ERROR_FILE}"


def record_failure(context: dict[str, Any]) -> None:
    """Write the failed task's error (type and message, secrets redacted) to its ``error.json``; never raises."""
    task, ti, error = context.get("task"), context.get("ti"), context.get("exception")
    work_uri = getattr(task, "work_uri", None)
    if not work_uri or ti is None:
        return
    try:
        # Airflow's masker: hides every secret registered in this task (connection passwords, URI credentials).
        from airflow.sdk._shared.secrets_masker import redact

        uri = error_uri(work_uri, ti.dag_id, ti.run_id, ti.task_id)
        message = (
            str(redact(f"{type(error).__name__}: {error}")) if error is not None else "failed without an exception"
        )
        document = {"task_id": ti.task_id, "try_number": ti.try_number, "error": message}
        task.store.put_bytes(uri, json.dumps(document).encode(), content_type="application/json")
    except Exception:  # a callback that fails would hide the task's own error in the log
        log.exception("Could not record the failure of %s", ti.task_id)


def read_failure(store: Any, uri: str) -> str | None:
    """The error ``record_failure`` kept at ``uri``, or None when there is none."""
    from airflow_tl.exceptions import ObjectNotFoundError

    try:
        return str(json.loads(store.get_bytes(uri))["error"])
    except ObjectNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return f"unreadable error record {uri}"
