"""What ``make demo`` runs: local S3 unless one is configured, seed, run the DAGs, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Smallest-data strategies first: each later one must beat the champion the earlier ones left.
STRATEGIES = ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"]
MODEL_NAME = "digits-5-9"


def _prepare_airflow_env() -> Path:
    """Point Airflow at a demo home (SQLite) and this checkout's dags/, unless the user set them."""
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".demo" / "airflow")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return home


def _run(command: list[str], log_path: Path, what: str, env: dict[str, str]) -> None:
    started = time.monotonic()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log_path.read_text().splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"{what} failed (exit {code}); full log: {log_path}")
    print(f"  {what}: ok ({time.monotonic() - started:.0f}s, log {log_path})", flush=True)


def demo_conf(strategy: str, uris) -> dict:
    """The demo's settings, all passed explicitly: the product's defaults are not the demo's."""
    conf = {
        "dataset_uri": uris.target_dataset,
        "registry_uri": uris.registry,
        "work_uri": uris.work,
        "model_name": MODEL_NAME,
    }
    if strategy == "from_scratch":
        # The same architecture as the source, from random weights, at the digits' 32 px.
        conf |= {"architecture": "resnet18", "image_size": 32, "pretrained_uri": None}
    else:
        conf["pretrained_uri"] = uris.source_model
    return conf


def run_demo(
    *, aws_conn_id: str, bucket: str, seed: int, force: bool, epochs: int = 8, train_epochs: int | None = None
) -> int:
    home = _prepare_airflow_env()
    logs = home / "demo-logs"
    logs.mkdir(exist_ok=True)
    conn_var = f"AIRFLOW_CONN_{aws_conn_id.upper()}"
    local = None
    if conn_var not in os.environ:
        from airflow_tl.demo.local_s3 import start_local_s3

        local = start_local_s3()
        os.environ[conn_var] = local.connection_uri()
        print(f"Local S3 (moto) on {local.endpoint_url}; set {conn_var} to use your own S3 instead.", flush=True)
    else:
        print(f"Using the S3 of connection {aws_conn_id} from {conn_var}.", flush=True)
    # Airflow commands log in full to their files; this process prints the report, not Airflow's chatter.
    env = dict(os.environ)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    try:
        airflow = [sys.executable, "-m", "airflow"]
        _run([*airflow, "db", "migrate"], logs / "db-migrate.log", "airflow db migrate", env)
        seed_cmd = [sys.executable, "-m", "airflow_tl.demo", "seed", "--aws-conn-id", aws_conn_id, "--bucket", bucket]
        seed_cmd += ["--seed", str(seed), "--epochs", str(epochs), *(["--force"] if force else [])]
        _run(seed_cmd, logs / "seed.log", "seed demo data", env)
        from airflow_tl.demo.seed import DemoURIs

        uris = DemoURIs(bucket)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        for strategy in STRATEGIES:
            conf = demo_conf(strategy, uris)
            if train_epochs:
                conf["epochs"] = train_epochs
            dag_id = f"tl_{strategy}"
            command = [*airflow, "dags", "test", dag_id, "-c", json.dumps(conf)]
            _run(command, logs / f"{dag_id}.log", f"airflow dags test {dag_id}", env)
        _report(aws_conn_id, bucket, started)
    finally:
        if local is not None:
            local.stop()
    return 0


def _report(aws_conn_id: str, bucket: str, since: str) -> None:
    from airflow_tl.demo.seed import DemoURIs
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.registry.store import REPORT_FILE, Registry

    store = s3_store(aws_conn_id)
    uris = DemoURIs(bucket)
    registry = Registry(store, uris.registry, MODEL_NAME)
    promoted = {e["version"] for e in registry.history() if e.get("promoted")}
    rows = []
    for version in registry.versions():
        metrics = registry.read_metrics(version)
        strategy = (metrics.get("context") or {}).get("strategy")
        if strategy in STRATEGIES and metrics.get("written_at", "") >= since:
            rows.append((metrics["written_at"], strategy, version, metrics))
    print(f"\nTransfer from digits 0-4 to digits 5-9 ({uris.target_dataset}), test split:\n")
    header = f"  {'strategy':20} {'trainable params':>17} {'training time':>14} {'test accuracy':>14}  promoted"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for _, strategy, version, metrics in sorted(rows):
        training = metrics.get("training") or {}
        print(
            f"  {strategy:20} {training.get('trainable_params', 0):>17,} {training.get('train_seconds', 0):>12.1f} s "
            f"{metrics['summary']['accuracy']:>14.3f}  {'yes' if version in promoted else 'no'}"
        )
    champion = registry.champion().champion
    print()
    if champion is None:
        print(f"  No champion in {registry.uri}.")
        return
    print(f"  champion       {registry.version_uri(champion.version)}/")
    print(f"  report         {registry.version_uri(champion.version)}/{REPORT_FILE}")
    print(f"  pointer        {registry.uri}/champion.json")
    print(f"  history        {registry.uri}/history/")
