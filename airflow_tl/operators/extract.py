"""ExtractFeaturesOperator: features of a frozen pretrained network over a dataset, cached in S3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_tl.operators.base import TransferLearningBaseOperator
from airflow_tl.runtime import prepare_torch_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExtractFeaturesOperator(TransferLearningBaseOperator):
    """Run the frozen pretrained network over train/val/test and store its features as safetensors shards.

    Features are cached under a key derived from the weights' sha256, the dataset listing (keys and
    ETags) and the preprocessing: a second run over the same inputs reuses them without a forward
    pass and says so in the log and XCom. XCom: the features URI, counts, and whether it was a cache hit.

    :param model_uri: model folder of the pretrained network, usually the fetch task's output. (templated)
    :param dataset_uri: ``s3://`` dataset, ``train/val/test/<class>/`` or ``<class>/`` layout. (templated)
    :param features_root: where feature caches live; default ``<work_uri>/features``. Shared across runs,
        so the cache works across runs. (templated)
    :param batch_size: images per forward pass. (templated)
    :param threads: parallel S3 GETs and decodes. (templated)
    :param device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; the
        network runs there, under autocast on CUDA. ``"cuda"`` without a GPU fails at once. (templated)
    :param skip_corrupt: leave out images that cannot be decoded (counted in the log and XCom)
        instead of failing with their keys. (templated)
    :param split_seed: seed of the split when the dataset has no train/val/test folders. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``: how to read the dataset's folders. (templated)
    :param num_processes: processes extracting at once, each a contiguous block of every split (on CUDA each on
        a GPU of its own); the features come out in the same order as from one. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "model_uri",
        "dataset_uri",
        "features_root",
        "batch_size",
        "threads",
        "device",
        "skip_corrupt",
        "split_seed",
        "layout",
        "num_processes",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "model_uri", "dataset_uri", "features_root")
    ui_color = "#eaf5ea"

    def __init__(
        self,
        *,
        model_uri: str,
        dataset_uri: str,
        features_root: str | None = None,
        batch_size: int = 64,
        threads: int = 8,
        device: str = "auto",
        skip_corrupt: bool = False,
        split_seed: int = 0,
        layout: str = "auto",
        num_processes: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.dataset_uri = dataset_uri
        self.features_root = features_root
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.skip_corrupt = skip_corrupt
        self.split_seed = split_seed
        self.layout = layout
        self.num_processes = num_processes

    def lineage_inputs(self) -> list[str | None]:
        return [self.model_uri, self.dataset_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        prepare_torch_runtime()
        from airflow_tl.data.dataset import list_dataset
        from airflow_tl.devices import placement_for
        from airflow_tl.features.extract import extract_features
        from airflow_tl.hooks.s3 import worker_store_factory

        place = placement_for(self.device, self.num_processes)  # first: a missing GPU fails before any reading
        root = self.features_folder(self.features_root)
        dataset = list_dataset(self.store, self.dataset_uri, seed=self.split_seed, layout=self.layout)
        result = extract_features(
            self.store,
            model_uri=self.model_uri,
            dataset=dataset,
            features_root=root,
            batch_size=self.batch_size,
            threads=self.threads,
            place=place,
            skip_corrupt=self.skip_corrupt,
            num_processes=self.num_processes,
            worker_store=worker_store_factory(self.aws_conn_id) if self.num_processes > 1 else None,
        )
        self._lineage_outputs = [result.uri]
        summary = result.summary()
        self.log.info(
            "Features %s (%s): %s; %d-dim%s",
            result.uri,
            "cache hit, no forward pass" if result.cache_hit else f"computed at {result.images_per_s} images/s",
            ", ".join(f"{n} {s}" for s, n in result.counts.items()),
            result.feature_dim,
            f"; skipped {summary['skipped_corrupt']} corrupt images" if summary["skipped_corrupt"] else "",
        )
        return {"features_uri": result.uri, **{k: v for k, v in summary.items() if k != "uri"}}
