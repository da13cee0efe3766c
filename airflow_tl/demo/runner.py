"""What ``make demo`` runs: local S3 unless one is configured, seed, run the DAGs, report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
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


# In an `airflow dags test` log: a task starting, and a line of ours (structlog's console format).
_TASK_STARTS = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_OUR_LINE = re.compile(r"\[(?:info|warning|error)\s*\] (.+?) \[airflow_tl[\w.]*\] loc=")
_QUIET_SECONDS = 10.0  # without a terminal, a progress line at most this often (task changes at once)


def local_s3_unless_configured(aws_conn_id: str):
    """A local S3 (moto) behind ``aws_conn_id`` unless its connection is set in the environment; the caller
    stops what this returns (None: the configured S3 is used)."""
    conn_var = f"AIRFLOW_CONN_{aws_conn_id.upper()}"
    if conn_var in os.environ:
        print(f"Using the S3 of connection {aws_conn_id} from {conn_var}.", flush=True)
        return None
    from airflow_tl.demo.local_s3 import start_local_s3

    local = start_local_s3()
    os.environ[conn_var] = local.connection_uri()
    print(f"Local S3 (moto) on {local.endpoint_url}; set {conn_var} to use your own S3 instead.", flush=True)
    return local


def _run(command: list[str], log_path: Path, what: str, env: dict[str, str], progress: str | None = None) -> None:
    """Run ``command`` with its output in ``log_path``; with ``progress`` (a name), show its task and latest line."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if progress:
            _follow(process, log_path, progress)
        code = process.wait()
    if code != 0:
        tail = log_path.read_text().splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"{what} failed (exit {code}); full log: {log_path}")
    print(f"  {what}: ok ({time.monotonic() - started:.0f}s, log {log_path})", flush=True)


def _follow(process: subprocess.Popen, log_path: Path, name: str) -> None:
    """Until ``process`` ends: which task runs and its latest progress line, from the log it writes.

    On a terminal one line is rewritten in place; otherwise a line is printed when the task changes, and
    otherwise at most every ``_QUIET_SECONDS``. Airflow's own lines never show: only the demo's and ours.
    """
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns - 1
    position, rest, task, latest, shown, printed_at = 0, "", None, None, None, 0.0
    while process.poll() is None:
        time.sleep(0.5)
        with open(log_path, errors="replace") as log:
            log.seek(position)
            chunk = rest + log.read()
            position = log.tell()
        *lines, rest = chunk.split("\n")
        task_changed = False
        for line in lines:
            if match := _TASK_STARTS.search(line):
                task, latest, task_changed = match.group(1), None, True
            elif match := _OUR_LINE.search(line):
                latest = match.group(1)
        status = f"    {name} › {task or 'starting'}" + (f": {latest}" if latest else "")
        if status == shown:
            continue
        if tty:
            print("\r" + status[:width].ljust(width), end="", flush=True)
        elif task_changed or time.monotonic() - printed_at >= _QUIET_SECONDS:
            print(status[:200], flush=True)
            printed_at = time.monotonic()
        shown = status
    if tty and shown:
        print("\r" + " " * width + "\r", end="", flush=True)


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


def predict_conf(uris) -> dict:
    """tl_predict on the target's test images, into the demo bucket's predictions folder."""
    return {
        "dataset_uri": f"{uris.target_dataset}/test",
        "registry_uri": uris.registry,
        "model_name": MODEL_NAME,
        "output_uri": f"s3://{uris.bucket}/predictions/{MODEL_NAME}",
    }


def run_demo(
    *, aws_conn_id: str, bucket: str, seed: int, force: bool, epochs: int = 8, train_epochs: int | None = None
) -> int:
    home = _prepare_airflow_env()
    logs = home / "demo-logs"
    logs.mkdir(exist_ok=True)
    local = local_s3_unless_configured(aws_conn_id)
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
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for strategy in STRATEGIES:
            conf = demo_conf(strategy, uris)
            if train_epochs:
                conf["epochs"] = train_epochs
            dag_id = f"tl_{strategy}"
            command = [*airflow, "dags", "test", dag_id, "-c", json.dumps(conf)]
            _run(command, logs / f"{dag_id}.log", f"airflow dags test {dag_id}", env, progress=dag_id)
        # The champion put to work: the test images scored as new images would be (tl_predict).
        conf = predict_conf(uris)
        command = [*airflow, "dags", "test", "tl_predict", "-c", json.dumps(conf)]
        _run(command, logs / "tl_predict.log", "airflow dags test tl_predict", env, progress="tl_predict")
        # Under .demo/ beside the demo's Airflow home; under an Airflow home of your own, inside it.
        reports = REPO / ".demo" / "reports" if home == REPO / ".demo" / "airflow" else home / "demo-reports"
        _report(aws_conn_id, bucket, started, reports)
        _report_predictions(aws_conn_id, conf)
    finally:
        if local is not None:
            local.stop()
    return 0


def _report(aws_conn_id: str, bucket: str, since: str, reports: Path) -> None:
    """The table of what each strategy did, the champion, and local copies of the reports, which outlive a
    local S3."""
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
    reports.mkdir(parents=True, exist_ok=True)
    for _, strategy, version, _ in sorted(rows):
        local = reports / f"{MODEL_NAME}-{version}.html"
        local.write_bytes(store.get_bytes(f"{registry.version_uri(version)}/{REPORT_FILE}"))
        print(f"  {version:<4} {strategy:20} {local}")
    if champion is None:
        print(f"  No champion in {registry.uri}.")
        return
    print()
    print(f"  champion       {registry.version_uri(champion.version)}/")
    print(f"  report         {registry.version_uri(champion.version)}/{REPORT_FILE}")
    print(f"  local copy     {reports / f'{MODEL_NAME}-{champion.version}.html'}")
    print(f"  pointer        {registry.uri}/champion.json")
    print(f"  history        {registry.uri}/history/")


def _report_predictions(aws_conn_id: str, conf: dict) -> None:
    """What tl_predict wrote for the champion, and how often it agrees with the folder each image is in."""
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.predict.parts import read_part
    from airflow_tl.registry.store import Registry

    store = s3_store(aws_conn_id)
    champion = Registry(store, conf["registry_uri"], MODEL_NAME).champion().champion
    if champion is None:
        return
    folder = f"{conf['output_uri']}/version={champion.version}"
    parts = [o.uri for o in store.list(folder) if o.key.endswith(".parquet") and "/_rejects/" not in o.key]
    rows = [
        row for uri in parts for row in read_part(store.get_bytes(uri), uri, ("key", "predicted_class")).to_pylist()
    ]
    right = sum(row["predicted_class"] == row["key"].rsplit("/", 2)[-2] for row in rows)
    print()
    print(f"  predictions    {folder}/ ({len(rows)} images in {len(parts)} Parquet part(s), by tl_predict)")
    print(f"                 agreeing with their class folder: {right} of {len(rows)}")
