"""What every airflow-tl operator shares: the AWS connection, and run-scoped S3 prefixes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_tl.uris import slug

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_tl.storage.s3 import S3Store


def native(value: Any) -> Any:
    """A templated value as the Python value it spells: DAGs without ``render_template_as_native_obj``
    render ``{{ params.epochs }}`` as the string "10"; "all", URIs and other words stay strings."""
    if isinstance(value, str):
        try:
            return json.loads(value.replace("None", "null").replace("True", "true").replace("False", "false"))
        except ValueError:
            return value
    return value


class TransferLearningBaseOperator(BaseOperator):
    """Base for airflow-tl operators.

    :param aws_conn_id: Airflow AWS connection for every S3 access; its ``endpoint_url`` extra
        points at MinIO or another S3-compatible store. (templated)
    :param work_uri: ``s3://`` prefix for intermediate results; each task writes under
        ``<work_uri>/runs/<dag_id>/<run_id>/<task_id>/``, so retries overwrite their own output only. (templated)
    """

    template_fields: Sequence[str] = ("aws_conn_id", "work_uri")

    def __init__(self, *, aws_conn_id: str | None = "aws_default", work_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.work_uri = work_uri

    @cached_property
    def store(self) -> S3Store:
        from airflow_tl.hooks.s3 import s3_store

        return s3_store(self.aws_conn_id)

    def run_prefix(self, context: Context, explicit: str | None = None, *, what: str = "output_uri") -> str:
        """``explicit`` when given, else this task's run-scoped folder under ``work_uri``."""
        from airflow_tl.exceptions import InvalidArgumentError

        if explicit:
            return explicit.rstrip("/")
        if not self.work_uri:
            raise InvalidArgumentError(
                f"Task {self.task_id}: give {what} or work_uri (an s3:// prefix for run outputs)."
            )
        ti = context["ti"]
        return f"{self.work_uri.rstrip('/')}/runs/{ti.dag_id}/{slug(ti.run_id)}/{ti.task_id}"
