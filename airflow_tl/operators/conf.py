"""A DAG run's conf may only name the DAG's Params: a key that is not one would be silently ignored otherwise.

Airflow merges a run's conf into its Params and validates the values of the Params it knows, but keeps any other
key without a word: ``{"epoch": 3}`` runs with the default ``epochs``, ``{"num_processes": 2}`` on a DAG without
that Param runs in one process. DAGs built by airflow-tl's factory and the shipped DAG files give their
operators the Params' names (``allowed_conf``, through ``default_args``); the first task then refuses a conf
that names anything else, before any work, naming the key, the closest Param and every valid one.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError


def unknown_conf_error(conf: Mapping[str, Any] | None, allowed: Collection[str], dag_id: str) -> str | None:
    """The message for the conf keys that are not in ``allowed``, or None when there are none."""
    unknown = sorted(set(conf or {}) - set(allowed))
    if not unknown:
        return None
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return (
        f"The conf of this run of {dag_id} has keys that are not Params of the DAG: {', '.join(hints)}. They would "
        f"be ignored, so the run stops here. Valid Params: {', '.join(sorted(allowed))}."
    )


def check_conf(conf: Mapping[str, Any] | None, allowed: Collection[str], dag_id: str) -> None:
    message = unknown_conf_error(conf, allowed, dag_id)
    if message:
        raise InvalidArgumentError(message)
