"""Assess the data (size x similarity), then run the strategy the 2x2 matrix recommends.

Settings are the DAG's Params; the `strategy` Param overrides the advice. The schedule is
`AIRFLOW_TL_SCHEDULE_TL_AUTO` in the environment. See docs/choosing.md.
"""

from airflow_tl.pipelines import build_auto_dag

dag = build_auto_dag()
