"""TournamentOperator: rank strategies trained side by side, gate the best, report them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class TournamentOperator(TransferLearningBaseOperator):
    """Compare contenders evaluated on the same test images, put the best through the gate, and report all of them.

    Each contender is a strategy whose evaluate task registered a version with ``promote=False``. Contenders that
    failed are listed with the error their tasks recorded (``record_failure``); the task fails only when none
    finished. Writes ``tournament.json`` and ``tournament.html`` under the task's run prefix. XCom: the winner,
    its version and score, whether it was promoted, and whether the advisor's pick won.

    Run it with ``trigger_rule="all_done"`` so it runs whichever contenders failed.

    :param contenders: for each strategy, its train and evaluate tasks' XComs: ``{"train": ..., "evaluate": ...}``
        (None for a task that did not succeed). (templated)
    :param contender_tasks: for each strategy, the task ids whose recorded errors explain a failure.
    :param strategies: the strategies that competed in this run; others in ``contenders`` were not entered.
        Default: all of them. (templated)
    :param dataset_uri: the dataset every contender was tested on. (templated)
    :param registry_uri: ``s3://`` prefix of the registry. (templated)
    :param model_name: the registry's model name. (templated)
    :param advice: the assess task's XCom, to say whether its pick won; None without one. (templated)
    :param gate_metric: ``accuracy``, ``macro_f1``, ``log_loss`` or ``calibration_error``. (templated)
    :param min_improvement: how much better than the champion the gate metric must be. (templated)
    :param min_score: absolute bar the gate metric must reach, if any. (templated)
    :param min_test_images: fewest test images (unseen by both models) the gate will promote on. (templated)
    :param on_class_change: ``"keep"``, ``"promote"`` or ``"fail"`` when the classes changed. (templated)
    :param seed: seed of the split for datasets without train/val/test folders. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``. (templated)
    :param batch_size: images per forward pass. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the
        network runs there, under autocast on CUDA. ``"cuda"`` without a GPU fails at once. (templated)
    :param output_uri: folder for the report; default the task's run prefix under ``work_uri``. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "contenders",
        "strategies",
        "dataset_uri",
        "registry_uri",
        "model_name",
        "advice",
        "gate_metric",
        "min_improvement",
        "min_score",
        "min_test_images",
        "on_class_change",
        "seed",
        "layout",
        "batch_size",
        "threads",
        "device",
        "output_uri",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "dataset_uri", "registry_uri", "output_uri")
    ui_color = "#f6e0d0"
    # The registered versions of the contenders that finished: what was compared (set by execute).
    _compared: Sequence[str | None] = ()

    def __init__(
        self,
        *,
        contenders: dict[str, Any] | str,
        contender_tasks: dict[str, list[str]] | None = None,
        strategies: list[str] | None = None,
        dataset_uri: str,
        registry_uri: str,
        model_name: str,
        advice: dict[str, Any] | None = None,
        gate_metric: str = "accuracy",
        min_improvement: float = 0.0,
        min_score: float | None = None,
        min_test_images: int = 50,
        on_class_change: str = "keep",
        seed: int = 0,
        layout: str = "auto",
        batch_size: int = 64,
        threads: int = 8,
        device: str = "auto",
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.contenders = contenders
        self.contender_tasks = contender_tasks
        self.strategies = strategies
        self.dataset_uri = dataset_uri
        self.registry_uri = registry_uri
        self.model_name = model_name
        self.advice = advice
        self.gate_metric = gate_metric
        self.min_improvement = min_improvement
        self.min_score = min_score
        self.min_test_images = min_test_images
        self.on_class_change = on_class_change
        self.seed = seed
        self.layout = layout
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.output_uri = output_uri

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow.sdk import Asset

        from airflow_tl.evaluation.tournament import TOURNAMENT_FILE, Contender, run_tournament
        from airflow_tl.lineage import registry_outputs
        from airflow_tl.registry.promotion import Gate

        ti = context["ti"]
        gate = Gate(self.gate_metric, self.min_improvement, self.min_score, self.min_test_images, self.on_class_change)
        contenders = [
            Contender.from_xcoms(name, xcoms.get("train"), xcoms.get("evaluate"), self._error(ti, name))
            for name, xcoms in self.contenders.items()
            if self.strategies is None or name in self.strategies
        ]
        output = self.run_prefix(context, self.output_uri)
        result = run_tournament(
            self.store,
            contenders=contenders,
            registry_uri=self.registry_uri,
            model_name=self.model_name,
            dataset_uri=self.dataset_uri,
            gate=gate,
            advice=self.advice,
            seed=self.seed,
            layout=self.layout,
            batch_size=self.batch_size,
            threads=self.threads,
            device=self.device,
            context={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number},
            output_uri=output,
        )
        summary = result.summary()
        self._compared = [c.model_uri for c in contenders if c.finished]
        champion = registry_outputs(
            self.registry_uri, self.model_name, summary["version"], None, promoted=summary["promoted"]
        )
        self._lineage_outputs = [f"{output}/{TOURNAMENT_FILE}", *champion]
        self.log.info(
            "Winner %s (%s %.4f): %s (%s)",
            summary["winner"], summary["metric"], summary["score"],
            "promoted to champion" if summary["promoted"] else "not promoted", summary["reason"],
        )  # fmt: skip
        keys = ("version", "promoted", "winner", "metric", "score")
        extra = {**{k: summary[k] for k in keys}, "report_uri": f"{output}/tournament.html"}
        for outlet in self.outlets or []:  # DAGs scheduled on the model see which version won, and if it serves
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
        return {**summary, "report_uri": f"{output}/tournament.html"}

    def lineage_inputs(self) -> list[str | None]:
        return [self.dataset_uri, *self._compared]

    def _error(self, ti: Any, strategy: str) -> str | None:
        """The first error recorded by one of ``strategy``'s tasks in this run."""
        from airflow_tl.operators.failures import error_uri, read_failure

        if not self.work_uri:
            return None
        for task_id in (self.contender_tasks or {}).get(strategy, []):
            error = read_failure(self.store, error_uri(self.work_uri, ti.dag_id, ti.run_id, task_id))
            if error:
                return f"{task_id}: {error}"
        return None
