"""From scratch: the same architecture trained from random weights (large data, low similarity).

Settings are the DAG's Params (trigger form, or `airflow dags test tl_from_scratch -c '{...}'`); the schedule is
`AIRFLOW_TL_SCHEDULE_TL_FROM_SCRATCH` in the environment. See docs/strategies/from_scratch.md.
"""

from airflow_tl.pipelines import build_dag

dag = build_dag("from_scratch")
