"""Feature extraction: a new head on cached features of the frozen pretrained network (small data, high similarity).

Settings are the DAG's Params (trigger form, or `airflow dags test tl_feature_extraction -c '{...}'`); the schedule is
`AIRFLOW_TL_SCHEDULE_TL_FEATURE_EXTRACTION` in the environment. See docs/strategies/feature_extraction.md.
"""

from airflow_tl.pipelines import build_dag

dag = build_dag("feature_extraction")
