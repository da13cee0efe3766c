"""Who may see and change what: Airflow's own users, and its auth manager's DAG permissions.

A mounted plugin app is not behind Airflow's auth, so every route depends on
``airflow.api_fastapi.core_api.security.get_user`` (the bearer token, or the UI's ``_token`` cookie that
pages shown inside the UI send; neither: 401).
A model belongs to the DAGs that wrote its versions or its champion, and to those whose default Params
point at it. Reading it needs read access to every one of them; promoting or rolling back needs edit
access to every one. A model no DAG is known for needs access to all DAGs. Refused: 403, nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException, status

READ = "GET"
EDIT = "PUT"


def allowed(user: Any, method: str, dag_ids: Iterable[str]) -> bool:
    """Whether ``user`` may ``method`` (READ or EDIT) every DAG in ``dag_ids`` (all DAGs when there are none)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager = get_auth_manager()
    dags = sorted(set(dag_ids))
    if not dags:
        return manager.is_authorized_dag(method=method, user=user)
    return all(manager.is_authorized_dag(method=method, details=DagDetails(id=dag), user=user) for dag in dags)


def require(user: Any, method: str, dag_ids: Iterable[str], what: str) -> None:
    dags = sorted(set(dag_ids))
    if not allowed(user, method, dags):
        action = "read" if method == READ else "change"
        needs = f"DAG {'read' if method == READ else 'edit'} access to {', '.join(dags) or 'all DAGs'}"
        detail = f"User {user_name(user)!r} may not {action} {what}: it needs {needs}."
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail)


def user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:  # an auth manager's user class without a name: the id still identifies them
        return str(getattr(user, "get_id", lambda: "unknown")())
