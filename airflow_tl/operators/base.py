"""What every airflow-tl operator shares: the AWS connection, run-scoped S3 prefixes, typed arguments and URI checks.

Once templates are rendered, every templated argument is converted to the type its ``__init__`` declares
(``arguments.coerce``), and the secret parts of every URI argument are handed to Airflow's secrets masker, so
the rendered fields Airflow stores and shows are masked too. Before ``execute`` reads or writes anything,
every URI argument (``uri_fields``) is checked against ``[airflow_tl] allowed_uri_prefixes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_tl.operators.arguments import coerce, declared_types
from airflow_tl.uris import slug

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

    from airflow_tl.lineage import DatasetRef
    from airflow_tl.storage.s3 import S3Store

    LineageRef = str | DatasetRef | None


class TransferLearningBaseOperator(BaseOperator):
    """Base for airflow-tl operators.

    :param aws_conn_id: Airflow AWS connection for every S3 access; its ``endpoint_url`` extra
        points at MinIO or another S3-compatible store. (templated)
    :param work_uri: ``s3://`` prefix for intermediate results; each task writes under
        ``<work_uri>/runs/<dag_id>/<run_id>/<task_id>/``, so retries overwrite their own output only. (templated)
    :param allowed_conf: the names a DAG run's conf may use (the DAG's Params); any other key fails the task
        before it starts (operators/conf.py). None: not checked. airflow-tl's DAGs set it through default_args.
    """

    template_fields: Sequence[str] = ("aws_conn_id", "work_uri")
    # Arguments that name a place to read or write: checked against [airflow_tl] allowed_uri_prefixes.
    uri_fields: ClassVar[tuple[str, ...]] = ("work_uri",)
    # What execute wrote, for OpenLineage: most outputs are named only once it ran (run folders, versions).
    _lineage_outputs: Sequence[LineageRef] = ()

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        work_uri: str | None = None,
        allowed_conf: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.work_uri = work_uri
        self.allowed_conf = allowed_conf

    def lineage_inputs(self) -> list[LineageRef]:
        """What the task reads, for OpenLineage: URIs or ``DatasetRef``s (None is left out)."""
        return []

    def lineage_outputs(self) -> list[LineageRef]:
        """What the task wrote, for OpenLineage: what ``execute`` kept in ``_lineage_outputs``."""
        return list(self._lineage_outputs)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs as OpenLineage datasets; the provider's listener asks after a successful execute,
        in the same process, so ``_lineage_outputs`` is there. None without the provider."""
        from airflow_tl.lineage import operator_lineage

        return operator_lineage(self.lineage_inputs(), self.lineage_outputs())

    @cached_property
    def store(self) -> S3Store:
        from airflow_tl.hooks.s3 import s3_store

        return s3_store(self.aws_conn_id)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render as Airflow does, then type the arguments and mask URI secrets before Airflow stores them."""
        super().render_template_fields(context, jinja_env)
        self.prepare_arguments()

    def pre_execute(self, context: Context) -> None:
        """Refuse conf keys that are not Params, type the arguments (again: mapped tasks are rendered without the
        method above) and check every URI."""
        super().pre_execute(context)
        if self.allowed_conf is not None:
            from airflow_tl.operators.conf import check_conf

            check_conf(context["dag_run"].conf, self.allowed_conf, context["dag_run"].dag_id)
        self.prepare_arguments()
        self.check_uris()

    def prepare_arguments(self) -> None:
        """Convert each templated argument to its declared type and register URI secrets with the masker."""
        from airflow_tl.redaction import mask_uri_secrets

        types = declared_types(type(self), TransferLearningBaseOperator)
        for name in self.template_fields:
            if name in types:
                setattr(self, name, coerce(name, types[name], getattr(self, name)))
        for name in self.uri_fields:
            mask_uri_secrets(getattr(self, name))

    def check_uris(self) -> None:
        """Refuse any URI argument outside ``[airflow_tl] allowed_uri_prefixes``, naming the argument."""
        from airflow_tl.access import allowed_prefixes, check_allowed

        prefixes = allowed_prefixes()
        for name in self.uri_fields:
            check_allowed(name, getattr(self, name) or None, prefixes)

    def features_folder(self, explicit: str | None) -> str:
        """``explicit`` when given, else the feature cache shared by every run: ``<work_uri>/features``."""
        from airflow_tl.exceptions import InvalidArgumentError

        if explicit:
            return explicit
        if not self.work_uri:
            raise InvalidArgumentError(f"Task {self.task_id}: give features_root or work_uri (an s3:// prefix).")
        return f"{self.work_uri.rstrip('/')}/features"

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
