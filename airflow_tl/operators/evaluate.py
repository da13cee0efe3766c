"""EvaluateOperator: test-split metrics and report into a registry version, then the gate for the champion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.operators.links import VERSION_PAGE_KEY, ModelVersionLink
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class EvaluateOperator(TransferLearningBaseOperator):
    """Evaluate a trained model on the test split, register it as a version, and promote it if it beats the champion.

    Writes ``<registry_uri>/<model_name>/versions/<version>/``: the model folder, ``metrics.json`` (accuracy,
    macro-F1, per-class precision and recall, confusion matrix, log loss, calibration error), and a
    self-contained ``report.html`` with its plots. The version gets the next short name (``v1``, ``v2``, ...) of
    the model, allocated atomically; the DAG run that made it is recorded with it, and a retry of the run keeps
    its version. The champion is scored on the same test split; ``champion.json`` is replaced in
    one conditional PUT only when the gate passes, and every decision is appended to the history.
    XCom: the version, its metrics summary, and whether it was promoted and why.

    :param model_uri: trained model folder to evaluate. (templated)
    :param dataset_uri: ``s3://`` image dataset; its test split is used (split here when it has none). (templated)
    :param registry_uri: ``s3://`` prefix of the registry. (templated)
    :param model_name: the registry's model name; versions and the champion live under it. (templated)
    :param gate_metric: ``accuracy``, ``macro_f1``, ``log_loss`` or ``calibration_error``. (templated)
    :param min_improvement: how much better than the champion the gate metric must be. (templated)
    :param min_score: absolute bar the gate metric must reach, if any. (templated)
    :param min_test_images: fewest test images (unseen by both models) the gate will promote on. (templated)
    :param on_class_change: when the candidate's classes differ from the champion's: ``"keep"`` the champion
        (recorded with the reason), ``"promote"`` the candidate, or ``"fail"`` the task. (templated)
    :param promote: run the gate; False registers the version without touching the champion. (templated)
    :param seed: seed of the split for datasets without train/val/test folders: use training's. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``: how to read the dataset's folders. (templated)
    :param batch_size: images per forward pass. (templated)
    :param skip_corrupt: leave out test images that cannot be decoded instead of failing. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the
        network runs there, under autocast on CUDA. ``"cuda"`` without a GPU fails at once. (templated)
    :param version: a version name of your own instead of the next ``v<n>`` (which stays reserved for
        allocated names); a retry rewrites it. (templated)
    :param version_suffix: names this candidate, so several candidates of one run (a tournament's contenders)
        get versions of their own; appended to ``version`` when that is given. (templated)
    :param context_extra: small JSON-able facts recorded with the version and promotion (e.g. strategy). (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "model_uri",
        "dataset_uri",
        "registry_uri",
        "model_name",
        "gate_metric",
        "min_improvement",
        "min_score",
        "min_test_images",
        "on_class_change",
        "promote",
        "seed",
        "layout",
        "batch_size",
        "skip_corrupt",
        "threads",
        "device",
        "version",
        "version_suffix",
        "context_extra",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "model_uri", "dataset_uri", "registry_uri")
    ui_color = "#e3f1e0"
    operator_extra_links = (ModelVersionLink(),)

    def __init__(
        self,
        *,
        model_uri: str,
        dataset_uri: str,
        registry_uri: str,
        model_name: str,
        gate_metric: str = "accuracy",
        min_improvement: float = 0.0,
        min_score: float | None = None,
        min_test_images: int = 50,
        on_class_change: str = "keep",
        promote: bool = True,
        seed: int = 0,
        layout: str = "auto",
        batch_size: int = 64,
        skip_corrupt: bool = False,
        threads: int = 8,
        device: str = "auto",
        version: str | None = None,
        version_suffix: str | None = None,
        context_extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.dataset_uri = dataset_uri
        self.registry_uri = registry_uri
        self.model_name = model_name
        self.gate_metric = gate_metric
        self.min_improvement = min_improvement
        self.min_score = min_score
        self.min_test_images = min_test_images
        self.on_class_change = on_class_change
        self.promote = promote
        self.seed = seed
        self.layout = layout
        self.batch_size = batch_size
        self.skip_corrupt = skip_corrupt
        self.threads = threads
        self.device = device
        self.version = version
        self.version_suffix = version_suffix
        self.context_extra = context_extra

    def lineage_inputs(self) -> list[str | None]:
        return [self.model_uri, self.dataset_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.evaluation.task import evaluate_and_register
        from airflow_tl.registry.naming import check_own_name
        from airflow_tl.registry.promotion import Gate
        from airflow_tl.uris import slug

        ti = context["ti"]
        gate = Gate(self.gate_metric, self.min_improvement, self.min_score, self.min_test_images, self.on_class_change)
        version = None  # the run's v<n>, taken once the model is scored
        if self.version:
            version = f"{self.version}--{slug(self.version_suffix)}" if self.version_suffix else self.version
            check_own_name(version)
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}
        self.log.info(
            "Evaluating %s as %s version %s in %s",
            self.model_uri, self.model_name, version or "(the next v<n>)", self.registry_uri,
        )  # fmt: skip
        result = evaluate_and_register(
            self.store,
            model_uri=self.model_uri,
            dataset_uri=self.dataset_uri,
            registry_uri=self.registry_uri,
            model_name=self.model_name,
            version=version,
            gate=gate,
            promote=self.promote,
            seed=self.seed,
            layout=self.layout,
            batch_size=self.batch_size,
            threads=self.threads,
            device=self.device,
            skip_corrupt=self.skip_corrupt,
            context={**run, **(self.context_extra or {})},
            candidate=self.version_suffix,
        )
        summary = result.summary()
        from airflow_tl.lineage import registry_outputs

        self._lineage_outputs = registry_outputs(
            self.registry_uri, self.model_name, summary["version"], summary["model_uri"], promoted=summary["promoted"]
        )
        self.log.info(
            "%s: %s; %s (%s)",
            summary["model_uri"],
            ", ".join(f"{k} {v}" for k, v in summary["metrics"].items()),
            "promoted to champion" if summary["promoted"] else "not promoted",
            summary["reason"],
        )
        self.log.info("Report: %s", summary["report_uri"])
        from airflow_tl.dashboard.urls import version_page

        page = version_page(self.registry_uri, self.model_name, summary["version"])
        context["ti"].xcom_push(key=VERSION_PAGE_KEY, value=page)
        self.log.info("On the dashboard: %s", page)
        self._annotate_assets(context, summary)
        return summary

    def _annotate_assets(self, context: Context, summary: dict[str, Any]) -> None:
        """Asset events carry the new version, so DAGs scheduled on the model know what landed."""
        from airflow.sdk import Asset

        extra = {k: summary[k] for k in ("version", "model_uri", "report_uri", "promoted", "metrics")}
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
