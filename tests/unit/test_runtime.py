"""Task processes get torch runtime defaults before torch loads, and never override the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os, sys
from airflow_tl.runtime import prepare_torch_runtime
if sys.argv[1] == "torch-first":
    import torch  # noqa: F401
prepare_torch_runtime()
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "torch": "torch" in sys.modules}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_apply_before_torch_is_imported() -> None:
    assert probe("fresh") == {"policy": "PASSIVE", "torch": False}


def test_the_users_setting_wins() -> None:
    assert probe("fresh", OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"


def test_nothing_changes_once_torch_is_loaded() -> None:
    # OpenMP reads the variable when it loads: setting it afterwards would claim an effect it has not.
    assert probe("torch-first") == {"policy": None, "torch": True}
