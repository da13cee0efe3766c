"""The demo's seed command and the `make demo` path, against real servers in subprocesses."""

from __future__ import annotations

import os
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


def test_demo_run_seeds_fetches_and_reports(tmp_path):
    """What `make demo` runs, with its own Airflow home and its own local S3, as a newcomer gets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "airflow_tl.demo", "run", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Local S3 (moto) on http://127.0.0.1:" in done.stdout
    assert "airflow dags test tl_fetch_pretrained: ok" in done.stdout
    assert "model folder   s3://airflow-tl-demo/work/runs/tl_fetch_pretrained/manual__" in done.stdout
    assert "blocks         stem, layer1, layer2, layer3, layer4" in done.stdout


def test_local_s3_stops_cleanly():
    server = start_local_s3()
    server.stop()
    assert server.process.poll() is not None
