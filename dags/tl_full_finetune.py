"""Full fine-tune: every layer trained from the pretrained weights (large data, high similarity).

Settings are the DAG's Params (trigger form, or `airflow dags test tl_full_finetune -c '{...}'`); the schedule is
`AIRFLOW_TL_SCHEDULE_TL_FULL_FINETUNE` in the environment. See docs/strategies/full_finetune.md.
"""

from airflow_tl.pipelines import build_dag

dag = build_dag("full_finetune")
