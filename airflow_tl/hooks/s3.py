"""S3 access through an Airflow AWS connection, with retries on throttling and 5xx."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_tl.storage.s3 import S3Store

# botocore's "standard" mode retries throttling, transient 5xx and connection errors with
# exponential back-off. A connection's own ``config_kwargs`` extra overrides these. A body that breaks
# off mid-read is not botocore's to retry: S3Store repeats the whole operation (docs/reliability.md).
DEFAULT_RETRIES = {"mode": "standard", "total_max_attempts": 8}
# Image loading issues parallel GETs; more threads than pooled connections would reconnect constantly.
MAX_POOL = 32


def s3_store(aws_conn_id: str | None = "aws_default") -> S3Store:
    """An ``S3Store`` for the AWS connection ``aws_conn_id``; its ``endpoint_url`` extra selects MinIO, moto..."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    from airflow_tl.storage.s3 import S3Store

    connection_config = S3Hook(aws_conn_id=aws_conn_id).conn_config.botocore_config
    config = Config(retries=DEFAULT_RETRIES, max_pool_connections=MAX_POOL)
    if connection_config is not None:
        config = config.merge(connection_config)
    return S3Store(S3Hook(aws_conn_id=aws_conn_id, config=config).get_conn())


def worker_store_factory(aws_conn_id: str | None = "aws_default") -> Callable[[], S3Store]:
    """A picklable recipe for ``s3_store(aws_conn_id)`` in a process this task starts (a training rank).

    Such a process cannot ask Airflow's supervisor for connections, so the connection as it was resolved here
    travels with the recipe and reaches the child as its ``AIRFLOW_CONN_<ID>`` variable; the child's hook then
    builds its own session (refreshing assumed-role credentials as usual). Nothing is written to disk.
    """
    if aws_conn_id is None:
        return functools.partial(s3_store, None)
    from airflow.sdk import BaseHook

    snapshot = BaseHook.get_connection(aws_conn_id).as_json()
    return functools.partial(_store_from_snapshot, aws_conn_id, snapshot)


def _store_from_snapshot(aws_conn_id: str, snapshot: str) -> S3Store:
    os.environ[f"AIRFLOW_CONN_{aws_conn_id.upper()}"] = snapshot
    return s3_store(aws_conn_id)
