"""Prepare the sharded form of a dataset (WebDataset tar shards + index) for datasets of millions of images."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from airflow_tl.operators import PrepareShardsOperator

DEMO_BUCKET = "s3://airflow-tl-demo"

PARAMS = {
    "dataset_uri": Param(
        f"{DEMO_BUCKET}/datasets/digits-5-9",
        type="string",
        pattern=r"^s3://.+",
        description="s3:// dataset: train/val/test/<class>/<image> or <class>/<image>",
    ),
    "layout": Param(
        "auto",
        enum=["auto", "splits", "classes"],
        description="how to read dataset_uri's folders: 'splits' (train/val/test/<class>/), 'classes' "
        "(<class>/, split by key hash) or 'auto'",
    ),
    "split_seed": Param(0, type="integer", description="seed of the hash split of a <class>/ layout"),
    "shard_mb": Param(128, type="number", exclusiveMinimum=0, description="the most megabytes per shard"),
    "shard_images": Param(10000, type="integer", minimum=1, description="the most images per shard"),
    "threads": Param(16, type="integer", minimum=1, description="parallel S3 GETs of the images"),
}

with DAG(
    dag_id="tl_prepare_shards",
    description="Pack a dataset's images into WebDataset tar shards with an index, read one GET per shard",
    schedule=None,
    catchup=False,
    tags=["airflow-tl", "transfer-learning", "data"],
    render_template_as_native_obj=True,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(hours=6),
        "allowed_conf": sorted(PARAMS),  # a conf key that is not a Param fails the run (operators/conf.py)
    },
    doc_md="""
### Prepare a sharded dataset

Lists `dataset_uri` (`train/val/test/<class>/` or `<class>/` folders) as the strategy DAGs do, splits it the
same stable way, and writes `<dataset_uri>/shards/{train,val,test}-NNNNNN.tar` (WebDataset layout: per image
`<name>.<ext>`, `<name>.cls`, `<name>.json`), `manifest.json.gz` and `index.json`, last. Give
`<dataset_uri>/shards` as a strategy DAG's `dataset_uri` to train, extract and evaluate from the shards: one
GET per shard instead of one per image, and no listing of the images.

Run it again when images arrive: an unchanged listing is a cache hit, a changed one is packed again (every
image keeps its split). While it runs, readers of the shards see no index and fail with a clear message rather
than read a half-written set (docs/data.md, "Sharded datasets").
""",
    params=PARAMS,
) as dag:
    PrepareShardsOperator(
        task_id="prepare_shards",
        dataset_uri="{{ params.dataset_uri }}",
        layout="{{ params.layout }}",
        split_seed="{{ params.split_seed }}",
        shard_mb="{{ params.shard_mb }}",
        shard_images="{{ params.shard_images }}",
        threads="{{ params.threads }}",
    )
