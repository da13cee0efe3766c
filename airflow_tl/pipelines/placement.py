"""Where each task runs: Airflow's queue, pool, executor and priority, by task id, for the DAGs the factory builds.

A CeleryExecutor sends a task to the workers that listen on its ``queue``; a KubernetesExecutor builds its pod
from ``executor_config``; with several executors configured, ``executor`` picks one per task. So GPU work goes
to GPU workers while fetching stays on cheap ones:

    build_dag("full_finetune", task_args=on_gpu_workers(queue="gpu", pool="gpus"))

Keys are task ids without their TaskGroup: ``train`` applies to every strategy's ``train`` in ``tl_auto`` and
to every contender's in ``tl_tournament``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError

# The operator arguments that say where and how urgently a task runs, and nothing else.
PLACEMENT_ARGS = ("queue", "pool", "pool_slots", "priority_weight", "executor", "executor_config")
# The tasks that run the network: the ones a GPU worker should take.
GPU_TASKS = ("extract_features", "assess", "train", "evaluate", "tournament")
# Every task id the factory's DAGs use. One task_args may serve DAGs of several kinds, so an id from here that
# a DAG lacks is passed over; any other id is a typo and refused.
FACTORY_TASKS = (*GPU_TASKS, "fetch_pretrained", "choose_strategy", "enter_contenders")


def on_gpu_workers(
    queue: str | None = "gpu",
    *,
    pool: str | None = None,
    executor: str | None = None,
    executor_config: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``task_args`` that send every task running the network (``GPU_TASKS``) to the GPU workers."""
    args = {"queue": queue, "pool": pool, "executor": executor, "executor_config": executor_config}
    chosen = {k: v for k, v in args.items() if v is not None}
    return {task_id: dict(chosen) for task_id in GPU_TASKS}


def check_task_args(task_args: Mapping[str, Mapping[str, Any]] | None, task_ids: Iterable[str]) -> None:
    """Refuse a task id no airflow-tl DAG has, or an argument that is not about placement, naming both."""
    known = sorted(set(task_ids))
    for task_id, args in (task_args or {}).items():
        if task_id not in known and task_id not in FACTORY_TASKS:
            raise InvalidArgumentError(
                f"task_args names task {task_id!r}, which no airflow-tl DAG has; this DAG's tasks: {', '.join(known)}."
            )
        unknown = sorted(set(args) - set(PLACEMENT_ARGS))
        if unknown:
            raise InvalidArgumentError(
                f"task_args[{task_id!r}] sets {', '.join(unknown)}; only {', '.join(PLACEMENT_ARGS)} may be set "
                "there (timeouts have their own argument, retries go in default_args)."
            )
        slots = args.get("pool_slots", 1)
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise InvalidArgumentError(f"task_args[{task_id!r}]['pool_slots'] must be an integer >= 1, got {slots!r}.")


def apply_task_args(tasks: Iterable[Any], task_args: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Set ``task_args`` on ``tasks`` (operators), matching each by its task id without its TaskGroup."""
    tasks = list(tasks)
    check_task_args(task_args, (_own_id(t) for t in tasks))
    for task in tasks:
        for name, value in (task_args or {}).get(_own_id(task), {}).items():
            setattr(task, name, value)


def _own_id(task: Any) -> str:
    return task.task_id.rsplit(".", 1)[-1]
