"""Full fine-tune on several machines: train mapped over `nnodes` task instances that train as one.

Each instance runs `num_processes` training processes; all of them meet in one torch.distributed (c10d)
rendezvous at the `rdzv_endpoint` Param (host:port of a worker every node reaches), which every run must set.
The executor must run the instances at once, one per machine (a Celery queue or Kubernetes pods for GPU
workers: docs/deploy.md). See docs/scale.md, "Several machines".
"""

from airflow_tl.pipelines import build_dag

dag = build_dag("full_finetune", dag_id="tl_full_finetune_multinode", multinode=True)
