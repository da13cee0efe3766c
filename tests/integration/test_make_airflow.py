"""``make airflow`` for real: it brings up Airflow with the dashboard on 127.0.0.1, says how to log in, and
Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from airflow_tl.demo.local_s3 import free_port

ROOT = Path(__file__).resolve().parents[2]


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds ``marker`` (the test's own AIRFLOW_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def test_make_airflow_serves_the_dashboard_on_loopback_and_ctrl_c_stops_everything(local_s3):
    home = tempfile.mkdtemp(prefix="airflow-tl-make-airflow-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env |= {"AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_tl.demo", "airflow", "--port", str(port), "--no-seed"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 420
        while not any("Airflow is up" in line for line in output):
            assert process.poll() is None, "".join(output)[-4000:]
            assert time.monotonic() < deadline, "".join(output)[-4000:]
            time.sleep(1)
        text = "".join(output)
        assert f"http://127.0.0.1:{port}" in text and "login       admin / " in text
        assert httpx.get(f"http://127.0.0.1:{port}/airflow-tl/").status_code == 401  # the dashboard, behind auth
        assert len(_processes_with(f"AIRFLOW_HOME={home}")) >= 5  # bash and the four Airflow processes

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command
        assert process.wait(90) == 0, "".join(output)[-3000:]
        deadline = time.monotonic() + 30
        while _processes_with(f"AIRFLOW_HOME={home}") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_with(f"AIRFLOW_HOME={home}") == [], "processes left running after Ctrl-C"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in _processes_with(f"AIRFLOW_HOME={home}"):
            os.kill(pid, signal.SIGKILL)
