"""How long Airflow takes to import each DAG file, next to a bare ``import airflow.sdk``.

Each import runs in a fresh interpreter (as a DAG processor's parse does), best of several runs.
Prints ``BENCH dag_import_worst_s <s>`` and ``BENCH airflow_sdk_import_s <s>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEAT = 9

_TIMED = """
import sys, time
start = time.perf_counter()
{body}
print(time.perf_counter() - start)
"""
_LOAD_FILE = (
    "import importlib.util; spec = importlib.util.spec_from_file_location('dag', sys.argv[1]); "
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
)


def best_of(body: str, *args: str) -> float:
    env = {**os.environ, "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tl-bench-"))}
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    times = []
    for _ in range(REPEAT):
        out = subprocess.run(
            [sys.executable, "-c", _TIMED.format(body=body), *args], capture_output=True, text=True, env=env, check=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return min(times)


def main() -> None:
    sdk = best_of("import airflow.sdk")
    per_file = {f.name: best_of(_LOAD_FILE, str(f)) for f in sorted((ROOT / "dags").glob("*.py"))}
    for name, seconds in per_file.items():
        print(f"  {name:32} {seconds:.3f}s")
    print(f"BENCH airflow_sdk_import_s {sdk:.3f}")
    print(f"BENCH dag_import_worst_s {max(per_file.values()):.3f}")
    print(f"BENCH dag_import_overhead_s {max(per_file.values()) - sdk:.3f}")


if __name__ == "__main__":
    main()
