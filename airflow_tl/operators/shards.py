"""PrepareShardsOperator: the sharded form of a class-folder dataset, for datasets of millions of images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow_tl.operators.base import TransferLearningBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class PrepareShardsOperator(TransferLearningBaseOperator):
    """Pack a dataset's images into WebDataset tar shards under ``<dataset_uri>/shards/``, with an index.

    The images are listed and split exactly as the strategy DAGs list and split them, so the sharded form holds
    the same stable split and data manifest; give ``<dataset_uri>/shards`` as any DAG's ``dataset_uri`` to read it
    one GET per shard instead of one per image. A listing that is already prepared with the same sizes is a
    cache hit: nothing is written. ``index.json`` is written last, so a failed or retried task never leaves a
    half-written sharded dataset that readers would take for a complete one (docs/data.md, "Sharded datasets").
    XCom: the shards URI, counts per split, number of shards, bytes, and whether it was a cache hit.

    :param dataset_uri: ``s3://`` dataset in the ``train/val/test/<class>/`` or ``<class>/`` layout. (templated)
    :param split_seed: seed of the split when the dataset has no train/val/test folders; the shards keep
        that split whatever seed later reads them. (templated)
    :param layout: ``"auto"``, ``"splits"`` or ``"classes"``: how to read the dataset's folders. (templated)
    :param shard_mb: the most megabytes of images per shard; readers hold a few shards in memory. (templated)
    :param shard_images: the most images per shard. (templated)
    :param threads: parallel S3 GETs of the images. (templated)
    """

    template_fields: Sequence[str] = (
        *TransferLearningBaseOperator.template_fields,
        "dataset_uri",
        "split_seed",
        "layout",
        "shard_mb",
        "shard_images",
        "threads",
    )
    uri_fields = (*TransferLearningBaseOperator.uri_fields, "dataset_uri")
    ui_color = "#f3eee2"

    def __init__(
        self,
        *,
        dataset_uri: str,
        split_seed: int = 0,
        layout: Literal["auto", "splits", "classes"] = "auto",
        shard_mb: float = 128.0,
        shard_images: int = 10_000,
        threads: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_uri = dataset_uri
        self.split_seed = split_seed
        self.layout = layout
        self.shard_mb = shard_mb
        self.shard_images = shard_images
        self.threads = threads

    def lineage_inputs(self) -> list[str | None]:
        return [self.dataset_uri]

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_tl.data.shard_writer import prepare_shards

        result = prepare_shards(
            self.store,
            self.dataset_uri,
            seed=self.split_seed,
            layout=self.layout,
            shard_mb=self.shard_mb,
            shard_images=self.shard_images,
            threads=self.threads,
        )
        self._lineage_outputs = [result.uri]
        self.log.info(
            "Sharded dataset %s (%s): %s in %d shards, %.1f MB",
            result.uri,
            "cache hit, nothing written" if result.cache_hit else f"written at {result.images_per_s} images/s",
            ", ".join(f"{n} {s}" for s, n in result.counts.items()),
            result.shards,
            result.bytes / 1e6,
        )
        return {"shards_uri": result.uri, **{k: v for k, v in result.summary().items() if k != "uri"}}
