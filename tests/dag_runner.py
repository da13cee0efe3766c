"""Run a DAG in a process of its own, so a test can SIGKILL a task mid-flight and then retry it as Airflow would.

``python -m tests.dag_runner start <dag_id> <conf json>`` starts a DAG run the way ``dag.test()`` does and
prints ``RUN_ID <run_id>`` first. ``python -m tests.dag_runner resume <dag_id> <run_id>`` continues that run
after its process was killed: a task left running by the dead process is taken as failed and retried with its
next try number, as the scheduler does with a task whose worker died, and the run goes on to its end. Both use
Airflow's own task runner (``airflow.sdk.definitions.dag._run_task``), the one ``dag.test()`` uses.

The environment (AIRFLOW_HOME, the DAG folder, AIRFLOW_CONN_AWS_DEFAULT) comes from the test that starts it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def start(dag_id: str, conf: dict) -> str:
    """Run a new DAG run to its end (unless killed); its run id is printed before any task starts."""
    from airflow.models.dagrun import DagRun

    dag = _dag(dag_id)
    now = datetime.now(timezone.utc)
    print(f"RUN_ID {DagRun.generate_run_id(run_type='manual', logical_date=now, run_after=now)}", flush=True)
    return dag.test(logical_date=now, run_after=now, run_conf=conf).state


def resume(dag_id: str, run_id: str) -> str:
    """Retry whatever the killed process left unfinished, then run the rest of the DAG run."""
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    dag = _dag(dag_id)
    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        run.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        for ti in run.get_task_instances(session=session):
            if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED):
                print(f"RETRY {ti.task_id} after try {ti.try_number}", flush=True)
                ti.state = None  # its worker died: schedulable again, with the next try number
        run.state = DagRunState.RUNNING
        session.commit()
        while run.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in [t for t in run.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED]:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        return str(run.state)


if __name__ == "__main__":
    command, dag_id, argument = sys.argv[1:4]
    state = start(dag_id, json.loads(argument)) if command == "start" else resume(dag_id, argument)
    print(f"STATE {state}", flush=True)
    sys.exit(0 if str(state).endswith("success") else 1)
