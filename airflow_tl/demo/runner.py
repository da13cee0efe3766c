"""What ``make demo`` runs: local S3 unless one is configured, seed, run the DAGs, report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_DAGS = ["tl_fetch_pretrained"]


def _prepare_airflow_env() -> Path:
    """Point Airflow at a demo home (SQLite) and this checkout's dags/, unless the user set them."""
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".demo" / "airflow")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return home


def _run(command: list[str], log_path: Path, what: str) -> None:
    started = time.monotonic()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log_path.read_text().splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"{what} failed (exit {code}); full log: {log_path}")
    print(f"  {what}: ok ({time.monotonic() - started:.0f}s, log {log_path})", flush=True)


def run_demo(*, aws_conn_id: str, bucket: str, seed: int, force: bool, epochs: int = 8) -> int:
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
    try:
        airflow = [sys.executable, "-m", "airflow"]
        _run([*airflow, "db", "migrate"], logs / "db-migrate.log", "airflow db migrate")
        seed_cmd = [sys.executable, "-m", "airflow_tl.demo", "seed", "--aws-conn-id", aws_conn_id, "--bucket", bucket]
        seed_cmd += ["--seed", str(seed), "--epochs", str(epochs), *(["--force"] if force else [])]
        _run(seed_cmd, logs / "seed.log", "seed demo data")
        for dag_id in DEMO_DAGS:
            command = [*airflow, "dags", "test", dag_id]
            _run(command, logs / f"{dag_id}.log", f"airflow dags test {dag_id}")
        _report(aws_conn_id, bucket)
    finally:
        if local is not None:
            local.stop()
    return 0


def _report(aws_conn_id: str, bucket: str) -> None:
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # the report, not Airflow's start-up chatter
    from airflow_tl.demo.seed import DemoURIs
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.models.folder import CARD_FILE, read_card

    store = s3_store(aws_conn_id)
    uris = DemoURIs(bucket)
    print("\nDemo data:")
    for name, uri in uris.as_dict().items():
        print(f"  {name:15} {uri}")
    cards = [o for o in store.list(f"{uris.work}/runs/tl_fetch_pretrained") if o.key.endswith("/" + CARD_FILE)]
    latest = max(cards, key=lambda o: o.last_modified)
    folder = latest.uri.rsplit("/", 1)[0]
    card = read_card(store, folder)
    print("\nFetched pretrained model:")
    print(f"  model folder   {folder}/")
    print(f"  architecture   {card.architecture} ({card.num_classes} classes: {', '.join(card.class_names)})")
    print(f"  blocks         {', '.join(b.name for b in card.blocks)}")
    print(f"  source         {card.lineage.get('source')}")
    print(f"  sha256         {card.weights_sha256}")
