"""The Airflow plugin, registered by installing the package (entry point ``airflow.plugins``).

It mounts the dashboard app at ``/airflow-tl`` on the API server only (every other Airflow process loads
plugins too, and has no use for a web app), and adds two views shown inside Airflow's UI: "Models" in the
navigation, and a "Models" tab on each DAG. Every URL carries the ``[api] base_url`` path prefix.
"""

from __future__ import annotations

import sys

from airflow.plugins_manager import AirflowPlugin

from airflow_tl.dashboard.urls import URL_PREFIX, base_path

# The same test Airflow's own providers use (edge3): the api-server command, or its module run directly.
RUNNING_ON_API_SERVER = (len(sys.argv) > 1 and sys.argv[1] == "api-server") or (
    len(sys.argv) > 2 and sys.argv[2].endswith("airflow/api_fastapi/main.py")
)


def _apps() -> list[dict]:
    if not RUNNING_ON_API_SERVER:
        return []
    from airflow_tl.dashboard.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "airflow-tl dashboard"}]


class AirflowTLPlugin(AirflowPlugin):
    name = "airflow_tl"
    fastapi_apps = _apps()
    external_views = [
        {
            "name": "Models",
            "href": f"{base_path()}{URL_PREFIX}/",
            "url_route": "airflow-tl",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Models",
            "href": f"{base_path()}{URL_PREFIX}/dags/{{DAG_ID}}",
            "url_route": "airflow-tl-dag-models",
            "destination": "dag",
        },
    ]
