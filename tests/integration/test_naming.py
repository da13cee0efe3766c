"""Short version names against the real S3 server: v1, v2, ... in order, one per run and candidate, kept by
retries, and never given twice, however many runs ask at once."""

from __future__ import annotations

import threading

import pytest

from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.registry.naming import (
    ALLOCATIONS,
    DamagedRunEntryError,
    allocate_version,
    allocation,
    check_own_name,
    run_version,
)
from airflow_tl.registry.store import Registry, sort_versions, version_number


@pytest.fixture
def registry(store, bucket) -> Registry:
    return Registry(store, f"s3://{bucket}/registry", "digits")


def test_runs_get_v1_v2_in_order_and_a_retry_keeps_its_version(registry):
    first = allocate_version(registry, dag_id="tl_full_finetune", run_id="manual__1")
    second = allocate_version(registry, dag_id="tl_full_finetune", run_id="manual__2")
    assert (first, second) == ("v1", "v2")
    assert allocate_version(registry, dag_id="tl_full_finetune", run_id="manual__1") == "v1"  # a retry
    assert allocate_version(registry, dag_id="tl_from_scratch", run_id="manual__1") == "v3"  # same run id, other DAG
    assert run_version(registry, dag_id="tl_full_finetune", run_id="manual__2") == "v2"
    assert run_version(registry, dag_id="tl_full_finetune", run_id="manual__9") is None
    assert allocation(registry, "v2") == {
        "version": "v2", "dag_id": "tl_full_finetune", "run_id": "manual__2", "candidate": None,
    }  # fmt: skip
    assert allocation(registry, "v9") is None and allocation(registry, "before-short-names") is None


def test_the_candidates_of_one_run_get_versions_of_their_own(registry):
    names = {c: allocate_version(registry, dag_id="tl_tournament", run_id="r", candidate=c) for c in ("a", "b")}
    assert names == {"a": "v1", "b": "v2"}
    assert allocate_version(registry, dag_id="tl_tournament", run_id="r", candidate="b") == "v2"
    assert allocate_version(registry, dag_id="tl_tournament", run_id="r") == "v3"


def test_a_number_claimed_by_a_task_that_died_is_skipped_not_reused(store, registry):
    # The task claimed v1 and died before recording its run: its retry gets v2, and v1 is never given out.
    store.put_bytes(registry.root.join(ALLOCATIONS, "000000001.json"), b'{"version": "v1"}')
    assert allocate_version(registry, dag_id="d", run_id="r") == "v2"
    assert allocate_version(registry, dag_id="d", run_id="r2") == "v3"


def test_concurrent_runs_never_share_a_name_and_concurrent_tries_of_one_run_share_one(registry):
    results: dict[str, list[str]] = {"distinct": [], "same": []}
    barrier = threading.Barrier(12)
    errors = []

    def ask(kind: str, run_id: str) -> None:
        try:
            barrier.wait()
            results[kind].append(allocate_version(registry, dag_id="d", run_id=run_id))
        except Exception as err:  # reported below, with the thread's run
            errors.append((run_id, err))

    threads = [threading.Thread(target=ask, args=("distinct", f"run-{i}")) for i in range(8)]
    threads += [threading.Thread(target=ask, args=("same", "one-run")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(set(results["distinct"])) == 8 and len(set(results["same"])) == 1
    assert not set(results["same"]) & set(results["distinct"])
    # Numbers may be skipped (a try of "one-run" that lost to another keeps nothing), never given twice.
    given = [version_number(v) for v in results["distinct"] + results["same"][:1]]
    assert len(set(given)) == 9 and min(given) == 1


def test_a_damaged_run_entry_fails_for_good_naming_the_object(store, registry):
    allocate_version(registry, dag_id="d", run_id="r")
    (entry,) = store.list(registry.root.join("runs"))
    store.put_bytes(entry.uri, b'{"version": "latest"}')
    with pytest.raises(DamagedRunEntryError, match=rf"Run entry {entry.uri} names 'latest'") as raised:
        allocate_version(registry, dag_id="d", run_id="r")
    assert isinstance(raised.value, PermanentError)


@pytest.mark.parametrize("name", ["v3", "v10", "", "a/b", "../x", "-x", "x" * 129])
def test_a_users_own_version_name_cannot_take_an_allocated_name_or_leave_its_folder(name):
    with pytest.raises(InvalidArgumentError, match="Argument version must be"):
        check_own_name(name)


def test_own_names_and_older_ids_are_accepted_and_sort_before_short_names():
    for name in ("prod-2026", "v1.2", "v0", "version7", "tl_x--manual__1--abc"):
        check_own_name(name)
    assert sort_versions(["v10", "v2", "tl_x--run--1", "v1", "before"]) == ["before", "tl_x--run--1", "v1", "v2", "v10"]
