"""airflow-tl is a real Airflow provider: entry point, schema-valid provider info, listed by Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema

from airflow_tl.get_provider_info import get_provider_info


def test_provider_info_passes_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)
    assert get_provider_info()["package-name"] == "airflow-tl"


def test_entry_point_is_registered():
    (point,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_tl")]
    assert point.load()() == get_provider_info()


def test_modules_named_in_provider_info_import():
    import importlib

    info = get_provider_info()
    for section in ("operators", "hooks"):
        for module in (m for entry in info[section] for m in entry["python-modules"]):
            importlib.import_module(module)


def test_airflow_providers_list_shows_it():
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {p["package_name"]: p for p in json.loads(done.stdout[done.stdout.index("[") :])}
    assert "airflow-tl" in listed and listed["airflow-tl"]["version"] == "0.1.0"
