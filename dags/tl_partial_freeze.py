"""Partial freeze: the first k blocks frozen, the rest retrained (small data, low similarity).

Settings are the DAG's Params (trigger form, or `airflow dags test tl_partial_freeze -c '{...}'`); the schedule is
`AIRFLOW_TL_SCHEDULE_TL_PARTIAL_FREEZE` in the environment. See docs/strategies/partial_freeze.md.
"""

from airflow_tl.pipelines import build_dag

dag = build_dag("partial_freeze")
