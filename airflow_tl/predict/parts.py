"""Predictions as Parquet parts: one version's rows under ``<output_uri>/version=<version>/``.

Each part is one object, written in one PUT, so it is there complete or not at all. Part names carry the time
and a token of the try that wrote them, so a retry never overwrites an earlier try's part: it reads what is
there and scores the rest (``scored_pairs``). The Hive-style ``version=`` folder lets Spark, DuckDB or Athena
read every version as one table partitioned by version; ``_rejects/`` (images that could not be decoded) starts
with an underscore, which those readers skip when they read the predictions.

Columns of a predictions part: ``key`` (the image's object key), ``etag``, ``predicted_class``, ``confidence``
(its probability), ``prob_<class>`` for each of the model's classes in its order, ``model_version`` and
``scored_at`` (UTC). A rejects part: ``key``, ``etag``, ``reason``, ``model_version``, ``scored_at``. The
file metadata ``airflow_tl`` holds the model (name, version, URI, sha256, classes) and the run as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from airflow_tl.exceptions import PermanentError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import S3URI

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REJECTS_FOLDER = "_rejects"
PART_SUFFIX = ".parquet"
METADATA_KEY = b"airflow_tl"
PROB_PREFIX = "prob_"


class PredictionPartError(PermanentError):
    """An object among the predictions that is not a readable part of ours; the message names it."""


def version_folder(output: S3URI, version: str) -> S3URI:
    """Where ``version``'s predictions live: ``<output_uri>/version=<version>``."""
    return output.join(f"version={version}")


def new_token() -> str:
    """Names this try's parts: its start time (parts sort by it) and a random token (no two tries collide)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def part_name(token: str, number: int) -> str:
    return f"part-{token}-{number:05d}{PART_SUFFIX}"


def predictions_table(
    keys: list[str],
    etags: list[str],
    probs: Any,
    class_names: list[str],
    version: str,
    scored_at: datetime,
    metadata: dict[str, Any],
) -> Any:
    """One part's rows: ``probs`` is an (N, C) float tensor or array in ``class_names``' order."""
    import numpy as np
    import pyarrow as pa

    probs = np.asarray(probs, dtype=np.float32)
    best = probs.argmax(axis=1)
    columns: dict[str, Any] = {
        "key": pa.array(keys, pa.string()),
        "etag": pa.array(etags, pa.string()),
        "predicted_class": pa.array([class_names[i] for i in best], pa.string()),
        "confidence": pa.array(probs[np.arange(len(best)), best], pa.float32()),
    }
    for index, name in enumerate(class_names):
        columns[f"{PROB_PREFIX}{name}"] = pa.array(probs[:, index], pa.float32())
    columns |= _stamp(len(keys), version, scored_at)
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def rejects_table(
    rejects: list[tuple[str, str, str]], version: str, scored_at: datetime, metadata: dict[str, Any]
) -> Any:
    """Images that could not be decoded, as ``(key, etag, reason)``."""
    import pyarrow as pa

    keys, etags, reasons = (list(column) for column in zip(*rejects, strict=True))
    columns = {
        "key": pa.array(keys, pa.string()),
        "etag": pa.array(etags, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        **_stamp(len(keys), version, scored_at),
    }
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def _stamp(rows: int, version: str, scored_at: datetime) -> dict[str, Any]:
    import pyarrow as pa

    return {
        "model_version": pa.array([version] * rows, pa.string()),
        "scored_at": pa.array([scored_at] * rows, pa.timestamp("ms", tz="UTC")),
    }


def table_bytes(table: Any) -> bytes:
    """The table as one Parquet file in memory: a part is small enough, and one PUT makes it atomic."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_part(data: bytes, uri: str, columns: Iterable[str] | None = None) -> Any:
    """A part's table (``columns`` only, when given); a file that is not one of our parts is an error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = list(columns) if columns is not None else None
    try:
        table = pq.read_table(pa.BufferReader(data), columns=wanted)
    except (pa.ArrowException, OSError, KeyError) as err:
        raise PredictionPartError(
            f"{uri} is not a readable prediction part ({err}). Only airflow-tl's parts belong under a version's "
            "folder; move the object elsewhere or delete it, then run again."
        ) from None
    return table


def scored_pairs(store: S3Store, folder: S3URI, *, threads: int = 8) -> tuple[set[tuple[str, str]], int]:
    """Every ``(key, etag)`` already scored or rejected under ``folder``, and how many parts hold them.

    Objects that are not ``.parquet`` files (a ``_SUCCESS`` marker of another tool) are left alone.
    """
    parts = [obj for obj in store.list(folder) if obj.key.endswith(PART_SUFFIX)]
    if not parts:
        return set(), 0

    def pairs(uri: str) -> list[tuple[str, str]]:
        table = read_part(store.get_bytes(uri), uri, columns=("key", "etag"))
        return list(zip(table.column("key").to_pylist(), table.column("etag").to_pylist(), strict=True))

    done: set[tuple[str, str]] = set()
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="airflow-tl-parts") as pool:
        for found in pool.map(pairs, [obj.uri for obj in parts]):
            done.update(found)
    return done, len(parts)
