"""Which registries the dashboard may read, and which DAGs each model belongs to.

The registries are those of ``[airflow_tl] registries`` plus those named in the default Params of the DAGs
tagged ``airflow-tl`` (read from Airflow's serialized DAGs, the API server's own view of the DAG folder).
Nothing a request says adds to them: a ``registry`` in a request is only looked up among these.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from airflow_tl import settings

log = logging.getLogger(__name__)

TAG = "airflow-tl"  # every DAG the factory builds carries it
_CACHE_SECONDS = 30.0  # the DAG processor re-serialises DAGs every few seconds at most; pages come faster
_cache: dict[str, tuple[float, dict[str, Registry]]] = {}


@dataclass
class Registry:
    uri: str
    in_setting: bool = False
    # model name -> DAGs whose default Params write it there
    dag_models: dict[str, set[str]] = field(default_factory=dict)

    @property
    def dag_ids(self) -> set[str]:
        return {dag for dags in self.dag_models.values() for dag in dags}


def normalise(uri: str) -> str:
    return uri.strip().rstrip("/")


def configured(*, fresh: bool = False) -> dict[str, Registry]:
    """Every registry the dashboard shows, by normalised URI: the setting's first, then the DAGs'."""
    cached = _cache.get("registries")
    if cached and not fresh and time.monotonic() - cached[0] < _CACHE_SECONDS:
        return cached[1]
    found: dict[str, Registry] = {}
    for uri in map(normalise, settings.get_list("registries")):
        found.setdefault(uri, Registry(uri, in_setting=True))
    for dag_id, registry_uri, model_name in _dag_defaults():
        entry = found.setdefault(normalise(registry_uri), Registry(normalise(registry_uri)))
        entry.dag_models.setdefault(model_name, set()).add(dag_id)
    _cache["registries"] = (time.monotonic(), found)
    return found


def _dag_defaults() -> list[tuple[str, str, str]]:
    """(dag_id, registry_uri, model_name) of each airflow-tl DAG whose Params default to both."""
    try:
        from airflow.models.dag import DagTag
        from airflow.models.serialized_dag import SerializedDagModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            dag_ids = list(session.scalars(select(DagTag.dag_id).where(DagTag.name == TAG)))
            rows = SerializedDagModel.get_latest_serialized_dags(dag_ids=dag_ids, session=session)
            found = []
            for row in rows:
                params = row.dag.params
                registry_uri, model_name = _default(params, "registry_uri"), _default(params, "model_name")
                if isinstance(registry_uri, str) and registry_uri and isinstance(model_name, str) and model_name:
                    found.append((row.dag_id, registry_uri, model_name))
            return found
    except Exception as err:  # the setting's registries still show; the log says why the DAGs' do not
        log.warning("Could not read the airflow-tl DAGs' default registries from Airflow's database: %s", err)
        return []


def _default(params, name: str):
    try:
        return params.get_param(name).value
    except Exception:  # absent (KeyError), or required with no default (.value raises): it names no registry
        return None
