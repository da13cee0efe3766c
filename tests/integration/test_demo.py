"""The demo's seed command and the `make demo` path, against real servers in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from airflow_tl.demo.local_s3 import start_local_s3
from airflow_tl.models.folder import instantiate, load_model_folder

ROOT = Path(__file__).resolve().parents[2]


def test_seed_publishes_datasets_and_a_source_model(store, local_s3):
    done = subprocess.run(
        [sys.executable, "-m", "airflow_tl.demo", "seed", "--bucket", "tl-seed-test", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert printed["source_model"] == "s3://tl-seed-test/zoo/resnet18-digits-0-4"

    for name, digits in (("source_dataset", "01234"), ("target_dataset", "56789")):
        keys = [o.key for o in store.list(printed[name])]
        layout = Counter(tuple(k.split("/")[2:4]) for k in keys)  # (split, class)
        assert {c for _, c in layout} == set(digits)
        assert {s for s, _ in layout} == {"train", "val", "test"}
        assert all(k.endswith(".png") for k in keys) and 850 < len(keys) < 950

    state_dict, card = load_model_folder(store, printed["source_model"])
    assert card.architecture == "resnet18" and card.class_names == list("01234")
    assert (card.input.crop_size, card.lineage["demo_seed"]["epochs"]) == (32, 1)
    instantiate(card, state_dict, source=printed["source_model"])


def test_demo_run_trains_every_strategy_and_reports(tmp_path):
    """What `make demo` runs, with its own Airflow home and its own local S3, as a newcomer gets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "airflow_tl.demo", "run", "--epochs", "1", "--train-epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Local S3 (moto) on http://127.0.0.1:" in out
    strategies = ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"]
    for strategy in strategies:
        assert f"airflow dags test tl_{strategy}: ok" in out
    rows = re.findall(r"^  (\w+) +([\d,]+) +([\d.]+) s +([\d.]+)  (yes|no)$", out, flags=re.MULTILINE)
    assert [r[0] for r in rows] == strategies, out
    params = {r[0]: int(r[1].replace(",", "")) for r in rows}
    assert params["feature_extraction"] < params["partial_freeze"] < params["full_finetune"] == params["from_scratch"]
    assert all(0.0 <= float(r[3]) <= 1.0 for r in rows) and rows[0][4] == "yes"  # the first run meets no champion
    champion = re.search(r"^  champion +(s3://airflow-tl-demo/registry/digits-5-9/versions/\S+)/$", out, re.MULTILINE)
    assert champion and f"  report         {champion.group(1)}/report.html" in out
    assert "credentials retrieved" not in out  # the report is not drowned in Airflow's log lines
    # The champion put to work on the test images by tl_predict.
    assert "airflow dags test tl_predict: ok" in out
    scored = re.search(r"^  predictions +s3://airflow-tl-demo/predictions/digits-5-9/version=(v\d+)/ \((\d+) images in",
                       out, re.MULTILINE)  # fmt: skip
    assert scored and champion.group(1).endswith(f"/{scored.group(1)}") and int(scored.group(2)) > 0, out[-3000:]
    assert re.search(rf"agreeing with their class folder: \d+ of {scored.group(2)}$", out, re.MULTILINE)
    # While each DAG ran: which task, and its latest line (no terminal here: a line per task at least).
    for task in ("fetch_pretrained", "train", "evaluate"):
        assert re.search(rf"^    tl_partial_freeze › {task}", out, re.MULTILINE), out[-3000:]
    # Every version's report as a local file, which outlives the local S3.
    local = dict(re.findall(r"^  (v\d+) +\w+ +(\S+\.html)$", out, re.MULTILINE))
    assert sorted(local) == ["v1", "v2", "v3", "v4"], out[-3000:]
    for path in map(Path, local.values()):
        assert path.parent == tmp_path / "home" / "demo-reports" and path.read_text().startswith("<!DOCTYPE html>")


def test_local_s3_stops_cleanly():
    server = start_local_s3()
    server.stop()
    assert server.process.poll() is not None
