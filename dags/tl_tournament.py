"""Run the transfer strategies side by side on the same data and put the best through the gate.

Settings are the DAG's Params; `strategies` chooses the contenders. The schedule is
`AIRFLOW_TL_SCHEDULE_TL_TOURNAMENT` in the environment. See docs/choosing.md.
"""

from airflow_tl.pipelines import build_tournament_dag

dag = build_tournament_dag()
