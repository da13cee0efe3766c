"""S3 faults between the operators and S3 (tests/faultproxy.py on 127.0.0.1, in front of the moto server).

Each scenario runs a strategy DAG as the factory builds it, without Airflow retries, through the proxy:
every fault must be absorbed by botocore's retries or the store's own, and the run must end exactly as a
fault-free run with the same seed and conf does: the same weights, bit for bit, and a registry holding
nothing but complete versions. Errors that are not transient must fail instead of passing for "absent".
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from airflow_tl.exceptions import AccessDeniedError
from airflow_tl.models.folder import load_model_folder
from airflow_tl.registry.store import Registry
from tests.faultproxy import Event, Fault

EPOCHS = 2
MODEL = "digits"


# --- only a missing object is "absent" ---------------------------------------------------------------------------


def test_a_features_index_that_cannot_be_read_is_not_taken_for_a_missing_cache(store, bucket, proxy, faulty):
    from airflow_tl.features.extract import INDEX_FILE, read_features_index

    folder = f"s3://{bucket}/features/abc"
    store.put_bytes(f"{folder}/{INDEX_FILE}", b"{}")
    with proxy.scenario(Fault("deny", path=INDEX_FILE)), pytest.raises(AccessDeniedError) as err:
        read_features_index(faulty(), folder)
    assert f"while reading {folder}/{INDEX_FILE}" in str(err.value)


def test_a_model_card_that_cannot_be_read_is_not_taken_for_a_missing_one(store, bucket, proxy, faulty):
    from airflow_tl.demo.seed import _seeded_model_exists
    from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained
    from tests.helpers import publish_model

    output = f"s3://{bucket}/runs/fetch"
    publish_model(store, output)
    with proxy.scenario(Fault("deny", path="model.json")):
        with pytest.raises(AccessDeniedError, match=f"while reading {output}/model.json"):
            fetch_pretrained(FetchSpec(pretrained_uri=f"s3://{bucket}/zoo/m"), store=faulty(), output_uri=output)
        with pytest.raises(AccessDeniedError, match=f"while reading {output}/model.json"):
            _seeded_model_exists(faulty(), output, seed=0, epochs=8)
    assert proxy.injected["deny"] == 2


# --- strategy DAGs under faults ----------------------------------------------------------------------------------


@dataclass
class Run:
    strategy: str
    bucket: str
    state: str
    failures: list
    injected: Counter
    events: list[Event]
    faults: tuple[Fault, ...]


@pytest.fixture(scope="module")
def run_through_proxy(fault_proxy, run_dag, demo, small_target):
    """``run(strategy, *faults)``: the strategy's test DAG (no Airflow retries) in a fresh bucket, with every S3
    request of its tasks going through the proxy; the data and source model were seeded directly before."""
    proxy = fault_proxy
    from airflow_tl.hooks.s3 import s3_store

    direct = s3_store("aws_default")

    def run(strategy: str, *faults: Fault) -> Run:
        bucket = f"tl-faults-{uuid.uuid4().hex[:12]}"
        direct.ensure_bucket(bucket)
        conf = {
            "dataset_uri": small_target,
            "pretrained_uri": demo.source_model,
            "registry_uri": f"s3://{bucket}/registry",
            "work_uri": f"s3://{bucket}/work",
            "model_name": MODEL,
            "epochs": EPOCHS,
        }
        with pytest.MonkeyPatch.context() as patch, proxy.scenario(*faults):
            patch.setenv("AIRFLOW_CONN_AWS_DEFAULT", proxy.connection())
            result = run_dag(f"tl_test_pipeline_{strategy}", conf)
            return Run(strategy, bucket, result.state, result.failures, proxy.injected, list(proxy.events), faults)

    return run


@pytest.fixture(scope="module")
def baselines(run_through_proxy):
    """One fault-free run per strategy, shared by the scenarios."""
    runs = {strategy: run_through_proxy(strategy) for strategy in ("feature_extraction", "partial_freeze")}
    for run in runs.values():
        assert run.state == "success" and not run.injected, (run.failures, run.injected)
    return runs


def _image(event: Event) -> bool:
    return event.method == "GET" and event.path.endswith(".png")


def _checkpoint(event: Event) -> bool:
    return "/checkpoints/" in event.path


def _weights(event: Event) -> bool:
    return event.method == "GET" and "/model.safetensors" in event.path


def _write(event: Event) -> bool:
    return event.method in ("PUT", "POST", "DELETE")


def _champion(event: Event) -> bool:
    return event.method == "PUT" and event.path.endswith("/champion.json")


def _history(event: Event) -> bool:
    return event.method == "PUT" and "/history/" in event.path


# name: (strategy, the faults, what each run must show the faults hit)
SCENARIOS = {
    # Throttling in bursts: botocore backs off (on a 1 s scale) and tries again, up to 8 times.
    "slowdown-bursts": (
        "feature_extraction",
        lambda: (
            Fault("slowdown", methods=("PUT", "POST", "DELETE", "HEAD"), every=8, burst=2),
            Fault("slowdown", every=40, burst=3, per_request=3),
        ),
        (_image, _write),
    ),
    # Seconds of latency before the status line and in the middle of a body, under the client's read timeout.
    "latency": (
        "feature_extraction",
        lambda: (
            Fault("delay", every=40, seconds=1.0),
            # Writes on their own count, so that some are delayed however many reads a run makes.
            Fault("delay", methods=("PUT", "POST", "DELETE"), every=6, seconds=1.0),
            Fault("stall", every=45, min_body=1, seconds=1.0),
        ),
        (_image, _write),
    ),
    # 500s for requests that never reached S3, and for writes S3 did (conditional ones included): the answer lost.
    "internal-errors": (
        "partial_freeze",
        lambda: (
            Fault("lost", conditional=True, every=2),
            Fault("lost", methods=("PUT", "POST", "DELETE"), every=5, per_request=2),
            Fault("internal", every=15, burst=2, per_request=3),
        ),
        (_image, _checkpoint, _champion, _history),
    ),
    # Connections reset mid-body (images, weights, checkpoints), or before the answer to a write S3 did.
    "resets": (
        "partial_freeze",
        lambda: (
            Fault("reset", conditional=True, every=2),
            Fault("reset", path="/checkpoints/", every=2),
            Fault("reset", path="/model\\.safetensors", min_body=1, every=2),
            Fault("reset", every=9, per_request=2),
        ),
        (_image, _checkpoint, _weights, _champion, _history),
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_dag_run_under_faults_ends_exactly_as_a_fault_free_one(store, run_through_proxy, baselines, scenario):
    strategy, faults, evidence = SCENARIOS[scenario]
    run = run_through_proxy(strategy, *faults())

    assert run.state == "success", run.failures
    assert all(f.hits > 0 for f in run.faults), [(f.kind, f.path, f.hits) for f in run.faults]
    missed = [check.__name__ for check in evidence if not any(map(check, run.events))]
    assert not missed, (missed, Counter((e.kind, e.method) for e in run.events))
    expected = _champion_weights(store, baselines[strategy].bucket)
    actual = _champion_weights(store, run.bucket)
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def _champion_weights(store, bucket: str) -> dict[str, torch.Tensor]:
    """The weights of the registry's one version, after checking that the registry holds nothing partial."""
    registry = Registry(store, f"s3://{bucket}/registry", MODEL)
    prefix = registry.root.join("versions").folder_key
    folders = {o.key[len(prefix) :].split("/")[0] for o in store.list(registry.root.join("versions"))}
    (version,) = registry.versions()  # complete: metrics.json written last
    assert folders == {version}
    state_dict, _ = load_model_folder(store, registry.version_uri(version))  # model.json's sha256 checked
    champion = registry.champion()
    assert champion.problem is None and champion.champion.version == version
    (event,) = registry.history()
    assert event["version"] == version and event["promoted"]
    assert not store.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    return state_dict
