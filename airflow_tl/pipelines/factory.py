"""Build a strategy's pipeline (fetch → [extract] → train → evaluate) as a DAG or as a TaskGroup.

Light at import time like every DAG file: operators import torch only when they run.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, TaskGroup

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.operators import (
    EvaluateOperator,
    ExtractFeaturesOperator,
    FetchPretrainedOperator,
    FreezeAndTrainOperator,
)
from airflow_tl.pipelines.assets import ASSET_SCHEME, dataset_asset, model_asset  # noqa: F401  (public here too)
from airflow_tl.pipelines.nodes import NODE_SETTINGS, mapped_train, node_params
from airflow_tl.pipelines.params import DEMO_DEFAULTS, OPTIMISER_SETTINGS, strategy_params
from airflow_tl.pipelines.placement import apply_task_args
from airflow_tl.pipelines.strategies import Strategy, get_strategy
from airflow_tl.uris import slug

# Settings every task reads; in a DAG built here each is "{{ params.<name> }}".
SETTINGS = (
    "dataset_uri", "pretrained_uri", "architecture", "image_size", "registry_uri", "model_name", "work_uri",
    "epochs", "batch_size", "learning_rate", "patience", "seed", "freeze_layers", "augment", "skip_corrupt",
    "gate_metric", "min_improvement", "min_score", "min_test_images", "on_class_change", "layout", "lp_ft",
    "device", "num_processes", *OPTIMISER_SETTINGS,
)  # fmt: skip
TIMEOUTS = {
    "fetch_pretrained": timedelta(hours=1),
    "extract_features": timedelta(hours=4),
    "train": timedelta(hours=12),
    "evaluate": timedelta(hours=2),
}
# What every airflow-tl DAG shares: no catch-up, one run at a time, Params rendered with their types.
DAG_SETTINGS: dict[str, Any] = {
    "start_date": datetime(2026, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "render_template_as_native_obj": True,
}
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True}
_NO_SCHEDULE = {"", "none", "null"}


def schedule_from_env(dag_id: str) -> str | None:
    """The schedule in ``AIRFLOW_TL_SCHEDULE_<DAG_ID>`` (cron or preset such as ``@daily``); unset or "none": None."""
    value = os.environ.get(_schedule_var(dag_id), "").strip()
    return None if value.lower() in _NO_SCHEDULE else value


def build_dag(
    strategy: str,
    *,
    dag_id: str | None = None,
    schedule: str | None | object = ...,
    registry_uri: str = DEMO_DEFAULTS["registry_uri"],
    model_name: str = DEMO_DEFAULTS["model_name"],
    param_defaults: dict[str, Any] | None = None,
    default_args: dict[str, Any] | None = None,
    timeouts: dict[str, timedelta] | None = None,
    task_args: dict[str, dict[str, Any]] | None = None,
    multinode: bool = False,
    compute: str = "airflow",
    pod: dict[str, Any] | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """The DAG of one strategy, its settings as Params.

    ``schedule`` defaults to ``schedule_from_env(dag_id)``. ``registry_uri`` and ``model_name`` are the
    Params' defaults and name the Asset the evaluate task updates. ``param_defaults`` overrides other
    Params' defaults; ``timeouts`` overrides ``TIMEOUTS`` by task id; ``default_args`` goes to every task.
    ``task_args`` sets queue, pool, executor and priority by task id (``pipelines.placement``).
    ``multinode=True`` maps train over ``nnodes`` machines meeting at ``rdzv_endpoint`` (``pipelines.nodes``).
    ``compute="kubernetes"`` runs extraction, training and evaluation as ``python -m airflow_tl`` in pods;
    ``pod`` gives their KubernetesPodOperator arguments, ``image`` at least (``operators.pod``).
    """
    spec = get_strategy(strategy)
    _check_compute(compute, pod, multinode)
    if multinode and spec.uses_features:
        raise InvalidArgumentError(
            f"{spec.name} fits a head on cached features in one process: multinode=True is for strategies that "
            "train on images (partial_freeze, full_finetune, from_scratch)."
        )
    dag_id = dag_id or spec.dag_id
    defaults = {"registry_uri": registry_uri, "model_name": model_name, **(param_defaults or {})}
    params = strategy_params(spec, defaults)
    if multinode:
        params |= node_params(defaults)
    dag = DAG(
        dag_id=dag_id,
        description=f"{spec.title}: trains {spec.trains}",
        tags=["airflow-tl", "transfer-learning", spec.name],
        params=params,
        # allowed_conf: the tasks refuse a run whose conf names anything but these Params (operators/conf.py).
        default_args={**DEFAULT_ARGS, "allowed_conf": sorted(params), **(default_args or {})},
        doc_md=doc_md(spec, dag_id),
        schedule=schedule_from_env(dag_id) if schedule is ... else schedule,
        **DAG_SETTINGS,
        **({"user_defined_filters": {"tl_slug": slug}} if compute == "kubernetes" else {}),
        **dag_kwargs,
    )
    with dag:
        names = (*SETTINGS, *(NODE_SETTINGS if multinode else ()))
        settings = {name: f"{{{{ params.{name} }}}}" for name in names}
        outlets = [model_asset(registry_uri, model_name)]
        _add_tasks(spec, settings, "", outlets, {**TIMEOUTS, **(timeouts or {})}, pod if compute != "airflow" else None)
    apply_task_args(dag.tasks, task_args)
    return dag


def _check_compute(compute: str, pod: dict[str, Any] | None, multinode: bool) -> None:
    if compute not in ("airflow", "kubernetes"):
        raise InvalidArgumentError(
            f"Argument compute accepts only 'airflow' and 'kubernetes'. Provided value: {compute!r}."
        )
    if compute == "kubernetes" and not (pod and pod.get("image")):
        raise InvalidArgumentError(
            "compute='kubernetes' needs pod={'image': ...}: an image with airflow-tl installed, and the "
            "KubernetesPodOperator arguments the pods need (namespace, secrets, container_resources...)."
        )
    if compute == "kubernetes" and multinode:
        raise InvalidArgumentError(
            "multinode=True trains on Airflow workers; it does not combine with compute='kubernetes'."
        )
    if compute == "airflow" and pod:
        raise InvalidArgumentError("pod=... applies to compute='kubernetes' only.")


def build_task_group(
    strategy: str,
    *,
    group_id: str | None = None,
    settings: dict[str, Any],
    outlets: list[Asset] | None = None,
    timeouts: dict[str, timedelta] | None = None,
    default_args: dict[str, Any] | None = None,
    task_args: dict[str, dict[str, Any]] | None = None,
    **group_kwargs: Any,
) -> TaskGroup:
    """The same pipeline as a TaskGroup inside a DAG of your own (call it within ``with DAG(...)``).

    ``settings`` gives the values (literals or templates) by the names of the DAG Params in docs/strategies;
    ``dataset_uri``, ``registry_uri``, ``model_name`` and ``work_uri`` are required, as is ``pretrained_uri``
    (or ``architecture`` for from_scratch). Others take the strategy's defaults. Tasks get the factory's
    retries unless ``default_args`` (or the DAG's) say otherwise; ``task_args`` places them as ``build_dag``'s.
    """
    spec = get_strategy(strategy)
    required = {"dataset_uri", "registry_uri", "model_name", "work_uri"}
    required.add("architecture" if spec.init == "random" else "pretrained_uri")
    missing = sorted(required - set(settings))
    unknown = sorted(set(settings) - set(SETTINGS))
    if missing or unknown:
        raise InvalidArgumentError(
            f"TaskGroup for {spec.name}: settings needs {', '.join(sorted(required))}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)} (known: {', '.join(SETTINGS)})" if unknown else "")
            + "."
        )
    values = {name: param.value for name, param in strategy_params(spec).items()} | dict(settings)
    group_id = group_id or spec.name
    group_args = {**DEFAULT_ARGS, **(default_args or {})}
    with TaskGroup(group_id=group_id, default_args=group_args, **group_kwargs) as group:
        _add_tasks(spec, values, f"{group.group_id}.", outlets or [], {**TIMEOUTS, **(timeouts or {})})
    apply_task_args(group.iter_tasks(), task_args)
    return group


def _add_tasks(
    spec: Strategy, s: dict[str, Any], prefix: str, outlets: list[Asset], timeouts: dict[str, timedelta],
    pod: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    # Only a Param can hold a count or name the model lacks; a strategy's own value fits every model.
    freeze_layers = s["freeze_layers"] if spec.freeze_layers is None else None
    fetch = fetch_task(s, timeouts, init=spec.init, architecture=s.get("architecture"), freeze_layers=freeze_layers)
    first, _ = strategy_tasks(
        spec, s, prefix, f"{{{{ ti.xcom_pull(task_ids='{prefix}fetch_pretrained')['model_uri'] }}}}", timeouts,
        outlets=outlets, pod=pod,
    )  # fmt: skip
    fetch >> first


def fetch_task(
    s: dict[str, Any],
    timeouts: dict[str, timedelta],
    *,
    init: str = "pretrained",
    architecture: str | None = None,
    freeze_layers: Any = None,
) -> FetchPretrainedOperator:
    """The fetch task: the source's weights (or, for ``init="random"``, its architecture) as a model folder.

    ``freeze_layers`` (a value or template), when given, is checked against the model's blocks before any download.
    """
    return FetchPretrainedOperator(
        task_id="fetch_pretrained",
        pretrained_uri=s["pretrained_uri"],
        architecture=architecture if init == "random" else None,
        init=init,
        # From scratch without a source: a placeholder head, replaced by one for the dataset's classes in training.
        num_classes=2 if init == "random" else None,
        image_size=s["image_size"],
        seed=s["seed"],
        freeze_layers=freeze_layers,
        execution_timeout=timeouts["fetch_pretrained"],
        work_uri=s["work_uri"],
    )


def strategy_tasks(
    spec: Strategy,
    s: dict[str, Any],
    prefix: str,
    model_uri: str,
    timeouts: dict[str, timedelta],
    *,
    outlets: list[Asset] | None = None,
    pod: dict[str, Any] | None = None,
    **evaluate: Any,
) -> tuple[Any, Any]:
    """[extract →] train → evaluate for one strategy, starting from ``model_uri``; returns (first, evaluate).

    ``prefix`` is the TaskGroup's (``"<group>."``) when the tasks are in one; ``evaluate`` adds EvaluateOperator
    arguments (``promote``, ``version_suffix``, ``context_extra``). With ``pod``, the three run as pods.
    """

    def heavy(operator: type, command: str, task_id: str, args: dict[str, Any]) -> Any:
        if pod is None:
            return operator(task_id=task_id, **args)
        from airflow_tl.operators.pod import pod_task

        return pod_task(command, task_id, args, pod)

    multinode = "nnodes" in s

    def pull(task_id: str, key: str) -> str:
        # A mapped train (one instance per node) is read at map index 0: every node returns the same summary.
        index = ", map_indexes=0" if multinode and task_id == "train" else ""
        return f"{{{{ ti.xcom_pull(task_ids='{prefix}{task_id}'{index})['{key}'] }}}}"

    common = {"work_uri": s["work_uri"]}
    train_inputs: dict[str, Any] = {"dataset_uri": s["dataset_uri"]}
    extract = None
    if spec.uses_features:
        extract_args = dict(
            model_uri=model_uri,
            dataset_uri=s["dataset_uri"],
            split_seed=s["seed"],
            layout=s["layout"],
            batch_size=s["batch_size"],
            skip_corrupt=s["skip_corrupt"],
            device=s["device"],
            num_processes=s["num_processes"],
            execution_timeout=timeouts["extract_features"],
            **common,
        )
        extract = heavy(ExtractFeaturesOperator, "extract", "extract_features", extract_args)
        train_inputs = {"features_uri": pull("extract_features", "features_uri")}
    train_args = dict(
        model_uri=model_uri,
        freeze_layers=s["freeze_layers"] if spec.freeze_layers is None else spec.freeze_layers,
        init=spec.init,
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        learning_rate=s["learning_rate"],
        patience=s["patience"],
        **{name: s[name] for name in OPTIMISER_SETTINGS},
        augment=False if spec.uses_features else s["augment"],
        lp_ft=s["lp_ft"] if "lp_ft" in spec.options else False,
        seed=s["seed"],
        layout=s["layout"],
        skip_corrupt=s["skip_corrupt"],
        device=s["device"],
        # A head fitted on cached features runs in one process: the Param went to the extraction.
        num_processes=1 if spec.uses_features else s["num_processes"],
        execution_timeout=timeouts["train"],
        **train_inputs,
        **common,
    )
    if multinode:
        first_train, train = mapped_train(s, **train_args)
    else:
        first_train = train = heavy(FreezeAndTrainOperator, "train", "train", train_args)
    evaluate_args = dict(
        model_uri=pull("train", "model_uri"),
        dataset_uri=s["dataset_uri"],
        registry_uri=s["registry_uri"],
        model_name=s["model_name"],
        gate_metric=s["gate_metric"],
        min_improvement=s["min_improvement"],
        min_score=s["min_score"],
        min_test_images=s["min_test_images"],
        on_class_change=s["on_class_change"],
        seed=s["seed"],
        layout=s["layout"],
        batch_size=s["batch_size"],
        skip_corrupt=s["skip_corrupt"],
        device=s["device"],
        outlets=outlets or [],
        execution_timeout=timeouts["evaluate"],
        **{"context_extra": {"strategy": spec.name}, **evaluate},
        **common,
    )
    evaluate_task = heavy(EvaluateOperator, "evaluate", "evaluate", evaluate_args)
    if extract is not None:
        extract >> train
    train >> evaluate_task
    return extract or first_train, evaluate_task


def doc_md(spec: Strategy, dag_id: str) -> str:
    """What the DAG's page in the UI says: which quadrant it serves and why."""
    return f"""
### {spec.title} (`{spec.name}`)

**Serves: {spec.data} target data, {spec.similarity} similarity to the pretraining data.**

Trains {spec.trains}. {spec.why}

| | high similarity | low similarity |
|---|---|---|
| **small data** | feature_extraction | partial_freeze |
| **large data** | full_finetune | from_scratch |

Tasks: {" → ".join(_task_names(spec))}. Training checkpoints to S3 after every epoch, so a retry resumes
where the failed try stopped. The evaluate task writes a registry version (model, `metrics.json`,
`report.html`) under `<registry_uri>/<model_name>/versions/` and replaces `champion.json` only when the
gate passes (`gate_metric`, `min_improvement`, `min_score`).

Schedule: set `{_schedule_var(dag_id)}` (cron or preset such as `@weekly`) in the environment of the
DAG processor; unset means manual runs only. See docs/strategies/{spec.name}.md.
"""


def _task_names(spec: Strategy) -> list[str]:
    return ["fetch_pretrained", *(["extract_features"] if spec.uses_features else []), "train", "evaluate"]


def _schedule_var(dag_id: str) -> str:
    return f"AIRFLOW_TL_SCHEDULE_{re.sub(r'[^A-Za-z0-9]', '_', dag_id).upper()}"
