"""DAGs that run more than one strategy: ``tl_auto`` (assess, then the advised one) and ``tl_tournament`` (all of them).

Both fetch the pretrained source once; every strategy then starts from that model folder (``from_scratch`` takes
only its architecture and preprocessing). Each strategy's tasks form a TaskGroup named after it, so the
executor can place contenders on different workers, and settings whose default differs by strategy (epochs,
batch size, learning rate) fall back to each strategy's own when their Param is null.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, TaskGroup, task

from airflow_tl.operators import AssessTransferOperator, ChooseStrategyOperator
from airflow_tl.operators.failures import record_failure
from airflow_tl.operators.tournament import TournamentOperator
from airflow_tl.pipelines.factory import (
    DAG_SETTINGS,
    DEFAULT_ARGS,
    SETTINGS,
    TIMEOUTS,
    fetch_task,
    model_asset,
    schedule_from_env,
    strategy_tasks,
)
from airflow_tl.pipelines.params import DEMO_DEFAULTS, PER_STRATEGY, multi_strategy_params
from airflow_tl.pipelines.placement import apply_task_args
from airflow_tl.pipelines.strategies import STRATEGIES, Strategy

FETCHED = "{{ ti.xcom_pull(task_ids='fetch_pretrained')['model_uri'] }}"
ADVICE = "{{ ti.xcom_pull(task_ids='assess') }}"
# tl_auto checks freeze_layers before any download when partial_freeze may run: a bad value would otherwise fail
# only after the fetch and the assessment. tl_tournament does not: a contender's bad setting fails that contender
# alone, at its first try, and the others still compete (they need the fetched model anyway).
AUTO_FREEZE_LAYERS = "{{ params.freeze_layers if params.strategy in ('auto', 'partial_freeze') else none }}"
TIMEOUTS_MULTI = {**TIMEOUTS, "assess": timedelta(hours=1), "tournament": timedelta(hours=2)}


def build_auto_dag(dag_id: str = "tl_auto", **kwargs: Any) -> DAG:
    """fetch → assess → the advised strategy's [extract →] train → evaluate; the others are skipped.

    Takes ``build_dag``'s keyword arguments (schedule, registry_uri, model_name, param_defaults, default_args,
    timeouts, task_args, DAG kwargs). The ``strategy`` Param overrides the advice.
    """
    task_args = kwargs.pop("task_args", None)
    dag, timeouts, asset = _dag(dag_id, "auto", kwargs)
    with dag:
        fetch = fetch_task(_settings(), timeouts, freeze_layers=AUTO_FREEZE_LAYERS)
        assess = _assess(timeouts)
        choose = ChooseStrategyOperator(task_id="choose_strategy", advice=ADVICE, strategy="{{ params.strategy }}")
        fetch >> assess >> choose
        advice = {
            "advised_strategy": "{{ ti.xcom_pull(task_ids='assess')['strategy'] }}",
            "advice": "{{ ti.xcom_pull(task_ids='assess')['reason'] }}",
        }
        for spec in STRATEGIES.values():
            with TaskGroup(group_id=spec.name, tooltip=spec.title):
                first, _ = strategy_tasks(
                    spec, _settings(spec), f"{spec.name}.", FETCHED, timeouts, outlets=[asset],
                    context_extra={"strategy": spec.name, **advice},
                )  # fmt: skip
            choose >> first
    apply_task_args(dag.tasks, task_args)
    return dag


def build_tournament_dag(dag_id: str = "tl_tournament", **kwargs: Any) -> DAG:
    """fetch → the chosen strategies side by side (each registered, not promoted) → the best through the gate.

    The assessment runs beside them, so the report can say whether the advice won. Takes ``build_dag``'s keyword
    arguments; the ``strategies`` Param chooses the contenders.
    """
    task_args = kwargs.pop("task_args", None)
    dag, timeouts, asset = _dag(dag_id, "tournament", kwargs)
    with dag:
        fetch = fetch_task(_settings(), timeouts)
        assess = _assess(timeouts)
        contenders, tasks, evaluates = {}, {}, []
        enter = _enter_contenders()
        fetch >> [assess, enter]
        for spec in STRATEGIES.values():
            # A contender's final failure is kept in S3, so the tournament can say why it is missing.
            failures = {"on_failure_callback": record_failure}
            with TaskGroup(group_id=spec.name, tooltip=spec.title, default_args=failures) as group:
                first, evaluate = strategy_tasks(
                    spec, _settings(spec), f"{spec.name}.", FETCHED, timeouts, promote=False,
                    version_suffix=spec.name, context_extra={"strategy": spec.name, "tournament": True},
                )  # fmt: skip
            enter >> first
            contenders[spec.name] = {
                "train": f"{{{{ ti.xcom_pull(task_ids='{spec.name}.train') }}}}",
                "evaluate": f"{{{{ ti.xcom_pull(task_ids='{spec.name}.evaluate') }}}}",
            }
            tasks[spec.name] = list(group.children)
            evaluates.append(evaluate)
        s = _settings()
        tournament = TournamentOperator(
            task_id="tournament",
            contenders=contenders,
            contender_tasks=tasks,
            strategies="{{ params.strategies }}",
            dataset_uri=s["dataset_uri"],
            registry_uri=s["registry_uri"],
            model_name=s["model_name"],
            advice=ADVICE,
            **{k: s[k] for k in ("gate_metric", "min_improvement", "min_score", "min_test_images")},
            on_class_change=s["on_class_change"],
            seed=s["seed"],
            layout=s["layout"],
            device=s["device"],
            work_uri=s["work_uri"],
            trigger_rule="all_done",
            outlets=[asset],
            execution_timeout=timeouts["tournament"],
        )
        [*evaluates, assess] >> tournament
    apply_task_args(dag.tasks, task_args)
    return dag


def _enter_contenders():
    """Branch into the contenders the ``strategies`` Param names; the others are skipped."""

    @task.branch(task_id="enter_contenders")
    def enter_contenders(params: dict[str, Any] | None = None) -> list[str]:
        return list(params["strategies"])

    return enter_contenders()


def _dag(dag_id: str, kind: str, kwargs: dict[str, Any]) -> tuple[DAG, dict[str, timedelta], Asset]:
    schedule = kwargs.pop("schedule", ...)
    registry_uri = kwargs.pop("registry_uri", DEMO_DEFAULTS["registry_uri"])
    model_name = kwargs.pop("model_name", DEMO_DEFAULTS["model_name"])
    defaults = {"registry_uri": registry_uri, "model_name": model_name, **(kwargs.pop("param_defaults", None) or {})}
    timeouts = {**TIMEOUTS_MULTI, **(kwargs.pop("timeouts", None) or {})}
    params = multi_strategy_params(kind, defaults)
    # allowed_conf: the tasks refuse a run whose conf names anything but these Params (operators/conf.py).
    default_args = {**DEFAULT_ARGS, "allowed_conf": sorted(params), **(kwargs.pop("default_args", None) or {})}
    what = "assess the data, then run the advised strategy" if kind == "auto" else "all strategies side by side"
    dag = DAG(
        dag_id=dag_id,
        description=f"Transfer learning: {what}",
        tags=["airflow-tl", "transfer-learning", kind],
        params=params,
        default_args=default_args,
        doc_md=_doc_md(kind),
        schedule=schedule_from_env(dag_id) if schedule is ... else schedule,
        **DAG_SETTINGS,
        **kwargs,
    )
    return dag, timeouts, model_asset(registry_uri, model_name)


def _assess(timeouts: dict[str, timedelta]) -> AssessTransferOperator:
    s = _settings()
    return AssessTransferOperator(
        task_id="assess",
        model_uri=FETCHED,
        dataset_uri=s["dataset_uri"],
        max_images="{{ params.max_images }}",
        seed=s["seed"],
        layout=s["layout"],
        skip_corrupt=s["skip_corrupt"],
        device=s["device"],
        work_uri=s["work_uri"],
        execution_timeout=timeouts["assess"],
    )


def _settings(spec: Strategy | None = None) -> dict[str, Any]:
    """Templates of every setting; for ``spec``, the per-strategy ones fall back to its own default when null."""
    s = {name: f"{{{{ params.{name} }}}}" for name in SETTINGS if name != "architecture"}
    if spec is not None:
        for name in PER_STRATEGY:
            own = spec.defaults[name]
            s[name] = f"{{{{ params.{name} if params.{name} is not none else {own!r} }}}}"
    return s


def _doc_md(kind: str) -> str:
    if kind == "auto":
        flow = (
            "fetch → **assess** (size × similarity, `advice.json`) → **choose_strategy** → the advised strategy's "
            "tasks → evaluate and gate. The other strategies' tasks are skipped. Set the `strategy` Param to "
            "override the advice."
        )
    else:
        flow = (
            "fetch → the strategies in the `strategies` Param, side by side (each evaluated into its own registry "
            "version on the same test images, none promoted) → **tournament**: the best goes through the gate "
            "against the champion; `tournament.html` lists every contender and whether the advice won."
        )
    return f"""
### Transfer learning: {"the advised strategy" if kind == "auto" else "tournament"}

{flow}

| | high similarity | low similarity |
|---|---|---|
| **small data** | feature_extraction | partial_freeze |
| **large data** | full_finetune | from_scratch |

How the advice is measured, its thresholds and how to override it: docs/choosing.md. The measured matrix:
docs/matrix.md.
"""
