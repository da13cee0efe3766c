"""DAG templates: one factory builds a strategy's DAG (or a TaskGroup) from a small strategy config."""

from airflow_tl.pipelines.factory import build_dag, build_task_group, schedule_from_env
from airflow_tl.pipelines.strategies import STRATEGIES, Strategy, get_strategy

__all__ = ["STRATEGIES", "Strategy", "build_dag", "build_task_group", "get_strategy", "schedule_from_env"]
