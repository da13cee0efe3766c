"""The tl_predict DAG: score the images under a prefix with a registry's champion, on a schedule or on Assets.

Scheduled on the model's Asset, a new champion rescans the whole prefix (every image is new to that version);
scheduled on the dataset's Asset, landed images are scored (the others were scored already). A version that was
registered but not promoted changes nothing: the champion's rows are all there, and the run only lists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param

from airflow_tl.operators import PredictOperator
from airflow_tl.pipelines.factory import DAG_SETTINGS, DEFAULT_ARGS, schedule_from_env
from airflow_tl.pipelines.params import DEMO_BUCKET, DEMO_DEFAULTS, S3_PATTERN, device_param, known_params
from airflow_tl.pipelines.placement import apply_task_args

PREDICT_DEFAULTS: dict[str, Any] = {
    "dataset_uri": DEMO_DEFAULTS["dataset_uri"],
    "registry_uri": DEMO_DEFAULTS["registry_uri"],
    "model_name": DEMO_DEFAULTS["model_name"],
    "output_uri": f"{DEMO_BUCKET}/predictions/{DEMO_DEFAULTS['model_name']}",
    "version": None,
    "batch_size": 64,
    "threads": 8,
    "skip_corrupt": False,
    "part_rows": 50_000,
    "device": "auto",
}
TIMEOUT = timedelta(hours=12)


def predict_params(defaults: dict[str, Any] | None = None) -> dict[str, Param]:
    """tl_predict's Params; ``defaults`` overrides the demo's by Param name."""
    d = {**PREDICT_DEFAULTS, **(defaults or {})}
    params = {
        "dataset_uri": Param(
            d["dataset_uri"],
            type="string",
            pattern=S3_PATTERN,
            description="s3:// prefix whose images are scored, at any depth (class folders are not needed), or a "
            "sharded dataset's <dataset>/shards",
        ),
        "registry_uri": Param(d["registry_uri"], type="string", pattern=S3_PATTERN, description="s3:// registry"),
        "model_name": Param(
            d["model_name"],
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            description="the registry's model whose champion scores the images",
        ),
        "version": Param(
            d["version"],
            type=["null", "string"],
            description="a version to score with (e.g. v3); null: the champion when the run starts",
        ),
        "output_uri": Param(
            d["output_uri"],
            type="string",
            pattern=S3_PATTERN,
            description="s3:// prefix of the predictions: <output_uri>/version=<version>/part-*.parquet, rejects in "
            "_rejects/; keep it stable, it is how a run knows what is already scored",
        ),
        "batch_size": Param(d["batch_size"], type="integer", minimum=1, description="images per forward pass"),
        "threads": Param(d["threads"], type="integer", minimum=1, description="parallel S3 GETs and decodes"),
        "skip_corrupt": Param(
            d["skip_corrupt"],
            type="boolean",
            description="list images that cannot be decoded in _rejects/ (with the reason) and go on, instead of "
            "failing the run",
        ),
        "part_rows": Param(
            d["part_rows"],
            type="integer",
            minimum=1,
            description="rows per Parquet part: each part is written whole as it fills, and memory holds one",
        ),
        "device": device_param(d["device"]),
    }
    return known_params(params, defaults, "tl_predict")


def build_predict_dag(
    *,
    dag_id: str = "tl_predict",
    schedule: Any = ...,
    param_defaults: dict[str, Any] | None = None,
    default_args: dict[str, Any] | None = None,
    task_args: dict[str, dict[str, Any]] | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """tl_predict: one task, ``predict``. ``schedule``: a cron, preset, Asset or Asset condition (e.g.
    ``model_asset(registry, name) | dataset_asset(prefix)``); by default ``schedule_from_env(dag_id)``.
    ``param_defaults`` overrides Params' defaults (an Asset-triggered run takes the defaults, so they must name
    what the Assets name); ``task_args`` sets queue, pool, executor and priority (``pipelines.placement``).
    """
    params = predict_params(param_defaults)
    dag = DAG(
        dag_id=dag_id,
        description="Score every image under a prefix with the champion; predictions as Parquet parts",
        tags=["airflow-tl", "transfer-learning", "predict"],
        params=params,
        default_args={
            **DEFAULT_ARGS,
            "execution_timeout": TIMEOUT,
            "allowed_conf": sorted(params),
            **(default_args or {}),
        },
        doc_md=DOC,
        schedule=schedule_from_env(dag_id) if schedule is ... else schedule,
        # max_active_runs=1 (DAG_SETTINGS) also keeps two runs from scoring the same new images at once.
        **DAG_SETTINGS,
        **dag_kwargs,
    )
    with dag:
        PredictOperator(
            task_id="predict",
            **{name: f"{{{{ params.{name} }}}}" for name in params},
        )
    apply_task_args(dag.tasks, task_args)
    return dag


DOC = """
### Score images with the champion

Scores every image under `dataset_uri` (any depth) with the champion of `registry_uri`/`model_name`, or with
`version`, and writes the predictions to `<output_uri>/version=<version>/part-*.parquet`: `key`, `etag`,
`predicted_class`, `confidence`, `prob_<class>` per class, `model_version`, `scored_at`. Images already scored
by that version are skipped, so a re-run scores only new or replaced images and a new champion rescans
everything. A retry finishes an interrupted run without duplicate or missing rows; each part is written whole.
With `skip_corrupt`, undecodable images are listed in `_rejects/` with the reason. See docs/predict.md.
"""
