"""AssessTransferOperator: place a dataset in the 2x2 matrix (size x similarity) and recommend a strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class AssessTransferOperator(TransferLearningBaseOperator):
    """Measure how much target data there is and how well the pretrained features serve it; recommend a strategy.

    Size is the training images per class. Similarity comes from transferability scores of the frozen network's
    features on a bounded, seeded sample of the training split: LogME, LEEP (when the source model's own head is
    usable) and a linear probe's held-out accuracy. Features come from the content-keyed cache when they are there
    (ExtractFeaturesOperator's, or an earlier assessment's). The thresholds are ``[airflow_tl] assess_*`` settings
    (docs/choosing.md). Writes ``advice.json`` under the task's run prefix. XCom: the recommended ``strategy``,
    the quadrant, the reason in one sentence, the deciding numbers and the advice's URI.

    :param model_uri: model folder of the pretrained network, usually the fetch task's output. (templated)
    :param dataset_uri: ``s3://`` dataset, ``train/val/test/<class>/`` or ``<class>/`` layout. (templated)
    :param features_root: where feature caches live; default ``<work_uri>/features``. (templated)
    :param max_images: most training images that go through the network. (templated)
    :param seed: seed of the sample, the probe and the split of datasets without split folders. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``: how to read the dataset's folders. (templated)
    :param batch_size: images per forward pass. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the
        network runs there, under autocast on CUDA. ``"cuda"`` without a GPU fails at once. (templated)
    :param skip_corrupt: leave out images that cannot be decoded instead of failing. (templated)
    :param output_uri: folder for ``advice.json``; default the task's run prefix under ``work_uri``. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "model_uri",
        "dataset_uri",
        "features_root",
        "max_images",
        "seed",
        "layout",
        "batch_size",
        "threads",
        "device",
        "skip_corrupt",
        "output_uri",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "model_uri", "dataset_uri", "features_root", "output_uri")
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        model_uri: str,
        dataset_uri: str,
        features_root: str | None = None,
        max_images: int = 2000,
        seed: int = 0,
        layout: str = "auto",
        batch_size: int = 64,
        threads: int = 8,
        device: str = "auto",
        skip_corrupt: bool = False,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.dataset_uri = dataset_uri
        self.features_root = features_root
        self.max_images = max_images
        self.seed = seed
        self.layout = layout
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.skip_corrupt = skip_corrupt
        self.output_uri = output_uri

    def lineage_inputs(self) -> list[str | None]:
        return [self.model_uri, self.dataset_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.assess.task import ADVICE_FILE, assess

        root = self.features_folder(self.features_root)
        output = self.run_prefix(context, self.output_uri)
        advice = assess(
            self.store,
            model_uri=self.model_uri,
            dataset_uri=self.dataset_uri,
            features_root=root,
            seed=self.seed,
            layout=self.layout,
            max_images=self.max_images,
            batch_size=self.batch_size,
            threads=self.threads,
            device=self.device,
            skip_corrupt=self.skip_corrupt,
            output_uri=output,
        )
        self._lineage_outputs = [f"{output}/{ADVICE_FILE}"]
        self.log.info("Recommended strategy: %s (%s). %s", advice.strategy, advice.quadrant, advice.reason)
        return {**advice.summary(), "advice_uri": f"{output}/{ADVICE_FILE}"}
