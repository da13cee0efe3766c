"""Links from a task in Airflow's UI to what it made: the version's page on the dashboard, the checkpoints.

The task pushes the link's target as an XCom while it runs; Airflow calls ``get_link`` on the worker when
the task ends and keeps the result for the UI, so a task that failed before registering a version shows
no link rather than a wrong one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

from airflow.sdk import BaseOperatorLink

from airflow_tl.uris import parse_s3_uri

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

VERSION_PAGE_KEY = "airflow_tl_version_page"


class ModelVersionLink(BaseOperatorLink):
    """EvaluateOperator's registry version on the ops dashboard."""

    name = "Model version"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom  # the worker's XCom client, where Airflow calls this

        return XCom.get_value(key=VERSION_PAGE_KEY, ti_key=ti_key) or ""


CHECKPOINTS_KEY = "airflow_tl_checkpoints_page"


class CheckpointsLink(BaseOperatorLink):
    """FreezeAndTrainOperator's checkpoint folder in the AWS console (none for other S3 endpoints)."""

    name = "Checkpoints"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=CHECKPOINTS_KEY, ti_key=ti_key) or ""


def s3_console_url(client, uri: str) -> str | None:
    """The AWS console's page of an ``s3://`` folder, or None for an endpoint that is not AWS's (MinIO, moto,
    on-premises S3), which has no such page."""
    host = urlsplit(client.meta.endpoint_url or "").hostname or ""
    if not (host == "amazonaws.com" or host.endswith(".amazonaws.com")):
        return None
    location = parse_s3_uri(uri, what="checkpoint_uri")
    query = urlencode({"region": client.meta.region_name or "us-east-1", "prefix": location.folder_key})
    return f"https://console.aws.amazon.com/s3/buckets/{quote(location.bucket)}?{query}"
