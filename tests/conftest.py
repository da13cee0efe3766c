"""Test session: a private AIRFLOW_HOME with SQLite, and a moto S3 server on 127.0.0.1 reached over HTTP.

The environment is set before anything imports Airflow, so no test can touch a real Airflow
home or real AWS credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(tempfile.mkdtemp(prefix="airflow-tl-tests-"))
DAGS = HOME / "dags"
FAILURES = HOME / "failures.jsonl"

for _var in [v for v in os.environ if v.startswith(("AWS_", "AIRFLOW_CONN_", "AIRFLOW__"))]:
    del os.environ[_var]
os.environ.update(
    AIRFLOW_HOME=str(HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{HOME / 'airflow.db'}",
    AIRFLOW_TL_TEST_FAILURES=str(FAILURES),
    # Credentials of the local endpoint only; a stray call to real AWS fails authentication.
    AWS_ACCESS_KEY_ID="airflow-tl-local",
    AWS_SECRET_ACCESS_KEY="airflow-tl-local",
    AWS_DEFAULT_REGION="us-east-1",
)
DAGS.mkdir()
for _dag_file in [*(ROOT / "dags").glob("*.py"), *(ROOT / "tests" / "dags").glob("*.py")]:
    shutil.copy(_dag_file, DAGS / _dag_file.name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def local_s3():
    """A moto S3 server in its own process; the ``aws_default`` connection points at it."""
    from airflow_tl.demo.local_s3 import start_local_s3

    server = start_local_s3()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_uri()
    yield server
    server.stop()
    del os.environ["AIRFLOW_CONN_AWS_DEFAULT"]


@pytest.fixture
def store(local_s3):
    """An S3Store built the production way: Airflow connection -> S3Hook -> boto3 over HTTP."""
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


@pytest.fixture(scope="module")
def fault_proxy(local_s3):
    """tests/faultproxy.py in front of the S3 server, shared by a module's tests; each test picks its faults."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(local_s3.endpoint_url) as proxy:
        yield proxy
        assert not proxy.errors, proxy.errors


@pytest.fixture
def proxy(fault_proxy):
    """The module's fault proxy with no faults and fresh counts, whatever the test before it chose."""
    fault_proxy.use()
    return fault_proxy


@pytest.fixture
def faulty(proxy, monkeypatch):
    """``faulty(attempts=None, **config_kwargs)``: an S3Store built the production way over a connection through
    the proxy; ``config_kwargs`` are botocore settings in the connection's extra, as a deployment would tune them,
    and ``attempts`` the store's own tries of a broken body."""
    from airflow_tl.hooks.s3 import s3_store

    def build(attempts: int | None = None, **config_kwargs):
        monkeypatch.setenv("AIRFLOW_CONN_TL_FAULTY", proxy.connection(**config_kwargs))
        built = s3_store("tl_faulty")
        if attempts is not None:
            built.attempts = attempts
        return built

    return build


@pytest.fixture
def bucket(store) -> str:
    """A fresh, empty bucket per test, so tests never see each other's objects."""
    name = f"tl-test-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture(scope="session")
def airflow_db() -> None:
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ)


@dataclass
class DagRunResult:
    state: str
    run_id: str
    task_states: dict[str, str]
    xcoms: dict[str, Any]
    failures: list[dict[str, str]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)  # attempts each task made

    def failure(self, task_id: str) -> dict[str, str]:
        return next(f for f in self.failures if f["task_id"] == task_id)


@pytest.fixture(scope="session")
def run_dag(airflow_db, local_s3):
    """Run a DAG from the test DAG folder with ``dag.test()`` and collect states, XComs and failures."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    def run(dag_id: str, conf: dict[str, Any] | None = None) -> DagRunResult:
        # Parsed afresh each time, as a worker would: an in-process run leaves its conf in the DAG's params.
        bag = DagBag(dag_folder=str(DAGS))
        assert not bag.import_errors, bag.import_errors
        FAILURES.unlink(missing_ok=True)
        dag_run = bag.get_dag(dag_id).test(run_conf=conf or {})
        with create_session() as session:
            tis = dag_run.get_task_instances(session=session)
            states = {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state) for ti in tis}
            tries = {ti.task_id: ti.try_number for ti in tis}
            rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, key="return_value"))
            xcoms = {row.task_id: XComModel.deserialize_value(row) for row in rows}
        failures = [json.loads(line) for line in FAILURES.read_text().splitlines()] if FAILURES.exists() else []
        state = dag_run.state.value if hasattr(dag_run.state, "value") else str(dag_run.state)
        return DagRunResult(state, dag_run.run_id, states, xcoms, failures, tries)

    return run


class _Files:
    """What the loopback HTTP server serves, and how it misbehaves or guards itself."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_next: list[int] = []  # HTTP status codes to answer with before serving normally
        self.redirects: dict[str, str] = {}  # path -> Location to answer 302 with
        self.basic_auth: tuple[str, str] | None = None  # (user, password) every request must carry
        self.query: dict[str, str] = {}  # parameters every request's query must carry, as a presigned URL does
        self.requests: list[str] = []  # request paths, query included
        self.headers: list[dict[str, str]] = []  # request headers, in order


@pytest.fixture
def http_server():
    """A loopback HTTP server standing in for download.pytorch.org or a model hub."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    served = _Files()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            served.requests.append(self.path)
            served.headers.append(dict(self.headers))
            url = urlsplit(self.path)
            if served.fail_next:
                self.send_error(served.fail_next.pop(0))
                return
            if not self._authorised(parse_qs(url.query)):
                self.send_error(401 if served.basic_auth else 403)
                return
            if url.path in served.redirects:
                self.send_response(302)
                self.send_header("Location", served.redirects[url.path])
                self.end_headers()
                return
            body = served.files.get(url.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            if served.basic_auth:
                token = base64.b64encode(":".join(served.basic_auth).encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    return False
            return all(query.get(name) == [value] for name, value in served.query.items())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield served
    server.shutdown()
    server.server_close()


@pytest.fixture
def allow_http(monkeypatch):
    """``[airflow_tl] allow_http = True``: the loopback server speaks plain http, which is refused by default."""
    monkeypatch.setenv("AIRFLOW__AIRFLOW_TL__ALLOW_HTTP", "True")


@pytest.fixture(scope="session")
def demo(local_s3):
    """The demo's digits data and its ResNet-18 pretrained on digits 0–4, seeded once per session."""
    from airflow_tl.demo.seed import seed_demo
    from airflow_tl.hooks.s3 import s3_store

    return seed_demo(s3_store("aws_default"), bucket="tl-demo-session", epochs=8)


@pytest.fixture(scope="session")
def small_target(demo, local_s3):
    """Digits 5–9 with 20 training images per class, to keep DAG runs short."""
    from tests.helpers import target_subset

    return target_subset(demo, "digits-5-9-small", per_class_train=20)


@pytest.fixture(scope="session")
def trained_by_operator(demo, small_target, run_dag) -> dict[str, str]:
    """One epoch of full fine-tuning on ``small_target`` by the operators (tl_test_train_full_finetune, batches of
    32, learning rate 1e-3, seed 0), for tests that check other ways of running it (the command line, pods) do
    the same work: the fetched and the trained model's URIs."""
    from airflow_tl.hooks.s3 import s3_store

    bucket = f"tl-operator-{uuid.uuid4().hex[:8]}"
    s3_store().ensure_bucket(bucket)
    conf = {"pretrained_uri": demo.source_model, "dataset_uri": small_target, "work_uri": f"s3://{bucket}/work"}
    result = run_dag("tl_test_train_full_finetune", conf | {"epochs": 1})
    assert result.state == "success", result.failures
    return {"fetched": result.xcoms["fetch"]["model_uri"], "trained": result.xcoms["train"]["model_uri"]}


@pytest.fixture(scope="session")
def dashboard_server(airflow_db, local_s3):
    """An Airflow API server with the dashboard plugin, showing the registry ``s3://tl-dashboard/registry``."""
    from airflow_tl.hooks.s3 import s3_store
    from tests.airflow_server import start_api_server

    s3_store("aws_default").ensure_bucket("tl-dashboard")
    server = start_api_server(HOME, "s3://tl-dashboard/registry")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dashboard_registry(demo, small_target, run_dag, dashboard_server) -> str:
    """Model ``digits`` made by two real runs of tl_feature_extraction (v1, v2); model ``hostile`` whose class
    names and strategy came from S3 holding markup."""
    from airflow_tl.hooks.s3 import s3_store
    from airflow_tl.registry.naming import allocate_version
    from airflow_tl.registry.promotion import Comparison, Gate, promote_if_better
    from airflow_tl.registry.store import Registry
    from tests.helpers import HOSTILE, publish_model

    store, uri = s3_store("aws_default"), dashboard_server.registry_uri
    conf = {
        "dataset_uri": small_target, "pretrained_uri": demo.source_model, "registry_uri": uri,
        "model_name": "digits", "work_uri": f"{uri}-work",
    }  # fmt: skip
    for _ in range(2):
        result = run_dag("tl_feature_extraction", conf)
        assert result.state == "success", result.failures
    registry = Registry(store, uri, "hostile")
    model = f"{uri}-work/hostile-model"
    publish_model(store, model, "mobilenet_v3_small", classes=[HOSTILE, "b"])
    version = allocate_version(registry, dag_id="tl_feature_extraction", run_id=HOSTILE)
    context = {"dag_id": "tl_feature_extraction", "run_id": HOSTILE, "strategy": HOSTILE}
    metrics = {"summary": {"accuracy": 0.5, "n": 60}, "metrics": {"class_names": [HOSTILE, "b"],
               "confusion": [[1, 0], [0, 1]]}, "context": context}  # fmt: skip
    registry.write_version(version, model_uri=model, metrics=metrics, report_html=b"<p>report</p>", plots={})
    promote_if_better(
        registry, version=version, score=0.5, images=60, gate=Gate(),
        compare=lambda champion: Comparison(60, 0.5, None), context=context,
    )  # fmt: skip
    return uri
