"""DAG templates: one factory builds a strategy's DAG (or a TaskGroup) from a small strategy config."""

from airflow_tl.pipelines.factory import build_dag, build_task_group, schedule_from_env
from airflow_tl.pipelines.multi import build_auto_dag, build_tournament_dag
from airflow_tl.pipelines.placement import on_gpu_workers
from airflow_tl.pipelines.strategies import STRATEGIES, Strategy, get_strategy

__all__ = [
    "STRATEGIES",
    "Strategy",
    "build_auto_dag",
    "build_dag",
    "build_task_group",
    "build_tournament_dag",
    "get_strategy",
    "on_gpu_workers",
    "schedule_from_env",
]
