"""PredictOperator: put the champion to work on every image under a prefix, predictions as Parquet parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class PredictOperator(TransferLearningBaseOperator):
    """Score every image under ``dataset_uri`` with the champion of ``registry_uri``/``model_name`` (or ``version``).

    Rows go to ``<output_uri>/version=<version>/part-*.parquet`` as they are scored: the image's key and ETag, the
    predicted class and its probability, a probability per class, the model version and when it was scored. Each
    part is written in one PUT, complete or absent. Images already scored by the same version (same key and ETag)
    are skipped, so a re-run scores only new or replaced images, a new champion rescans the whole prefix, and a
    retried task finishes what the failed try began without duplicate or missing rows. With ``skip_corrupt`` an
    image that cannot be decoded is listed in ``_rejects/`` with the reason instead of failing the task
    (docs/predict.md). XCom: the version used, counts (images, already scored, scored, rejected, gone: deleted
    after the listing, parts) and images/s.

    :param dataset_uri: ``s3://`` prefix whose images (any depth) are scored, or a sharded dataset's
        ``<dataset>/shards``. (templated)
    :param registry_uri: ``s3://`` prefix of the registry. (templated)
    :param model_name: the registry's model whose champion scores. (templated)
    :param output_uri: ``s3://`` prefix of the predictions; each version gets its own ``version=<v>`` folder. It
        must be stable across runs: it is how a run knows what is already scored. (templated)
    :param version: a complete version to score with instead of the champion. (templated)
    :param batch_size: images per forward pass. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param skip_corrupt: list images that cannot be decoded in the rejects and go on, instead of failing. (templated)
    :param part_rows: rows per Parquet part; memory holds one part. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "dataset_uri",
        "registry_uri",
        "model_name",
        "output_uri",
        "version",
        "batch_size",
        "threads",
        "skip_corrupt",
        "part_rows",
        "device",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "dataset_uri", "registry_uri", "output_uri")
    ui_color = "#e8e3f3"

    def __init__(
        self,
        *,
        dataset_uri: str,
        registry_uri: str,
        model_name: str,
        output_uri: str,
        version: str | None = None,
        batch_size: int = 64,
        threads: int = 8,
        skip_corrupt: bool = False,
        part_rows: int = 50_000,
        device: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_uri = dataset_uri
        self.registry_uri = registry_uri
        self.model_name = model_name
        self.output_uri = output_uri
        self.version = version
        self.batch_size = batch_size
        self.threads = threads
        self.skip_corrupt = skip_corrupt
        self.part_rows = part_rows
        self.device = device

    # The version that scored: known once execute has resolved the champion.
    _lineage_model: Any = None

    def lineage_inputs(self) -> list[Any]:
        return [self.dataset_uri, self._lineage_model]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.predict.task import PredictSpec, predict_images

        spec = PredictSpec(
            dataset_uri=self.dataset_uri,
            registry_uri=self.registry_uri,
            model_name=self.model_name,
            output_uri=self.output_uri,
            version=self.version or None,
            batch_size=self.batch_size,
            threads=self.threads,
            skip_corrupt=self.skip_corrupt,
            part_rows=self.part_rows,
            device=self.device,
        )
        ti = context["ti"]
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}
        result = predict_images(self.store, spec, run=run)
        from airflow_tl.lineage import DatasetRef

        self._lineage_model = DatasetRef(result.model_uri, version=result.version)
        self._lineage_outputs = [DatasetRef(result.output_uri, version=result.version)]
        summary = result.summary()
        self.log.info(
            "%s %s: %d images, %d already scored, %d scored now, %d rejected; predictions under %s",
            summary["model_name"], summary["version"], summary["images"], summary["already_scored"],
            summary["scored"], summary["rejected"], summary["output_uri"],
        )  # fmt: skip
        return summary
