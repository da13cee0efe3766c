"""tl_auto and tl_tournament end to end (dag.test(), SQLite, S3 over HTTP): the advice is measured and followed
or overridden, the contenders run side by side, one failing does not sink the others, and all failing does."""

from __future__ import annotations

import json

import pytest

from airflow_tl.registry.naming import allocation
from airflow_tl.registry.store import Registry

STRATEGIES = ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"]
PARTIAL_FREEZE_TASKS = ["partial_freeze.train", "partial_freeze.evaluate"]


def conf(demo, dataset: str, bucket: str, **extra) -> dict:
    return {
        "dataset_uri": dataset,
        "pretrained_uri": demo.source_model,
        "registry_uri": f"s3://{bucket}/registry",
        "work_uri": f"s3://{bucket}/work",
        "model_name": "digits",
        "epochs": 1,
        "min_test_images": 10,
    } | extra


def test_tl_auto_runs_the_advised_strategy_and_its_report_shows_the_advice(store, bucket, demo, small_target, run_dag):
    result = run_dag("tl_auto", conf(demo, small_target, bucket))
    assert result.state == "success", result.failures
    advice = result.xcoms["assess"]
    chosen = advice["strategy"]
    assert chosen in STRATEGIES and advice["quadrant"] == f"{advice['size']}_{advice['similarity']}"
    assert advice["images_per_class"] == 20.0 and advice["size"] == "small"  # 20 training images per class
    for strategy in STRATEGIES:
        expected = "success" if strategy == chosen else "skipped"
        assert result.task_states[f"{strategy}.evaluate"] == expected, strategy

    written = json.loads(store.get_bytes(advice["advice_uri"]))
    assert written["strategy"] == chosen and written["reason"] == advice["reason"]
    assert {"images_per_class", "smallest_class", "balance", "level"} <= set(written["size"])
    assert {"logme", "logme_gain", "leep", "leep_relative", "probe_accuracy", "probe_skill"} <= set(
        written["similarity"]["scores"]
    )
    assert written["sample"]["images"] == 100 and written["sample"]["forward_passes"] > 0

    summary = result.xcoms[f"{chosen}.evaluate"]
    assert summary["promoted"] and summary["version"] == "v1"
    metrics = Registry(store, f"s3://{bucket}/registry", "digits").read_metrics(summary["version"])
    assert metrics["context"]["advised_strategy"] == chosen and metrics["context"]["advice"] == advice["reason"]
    report = store.get_bytes(summary["report_uri"]).decode()
    assert advice["reason"].split(" so ")[0] in report


def test_tl_auto_strategy_param_overrides_the_advice(store, bucket, demo, small_target, run_dag):
    result = run_dag("tl_auto", conf(demo, small_target, bucket, strategy="from_scratch"))
    assert result.state == "success", result.failures
    assert result.task_states["from_scratch.evaluate"] == "success"
    assert {result.task_states[f"{s}.evaluate"] for s in STRATEGIES if s != "from_scratch"} == {"skipped"}
    metrics = Registry(store, f"s3://{bucket}/registry", "digits").read_metrics(
        result.xcoms["from_scratch.evaluate"]["version"]
    )
    assert metrics["context"]["strategy"] == "from_scratch"
    assert metrics["context"]["advised_strategy"] == result.xcoms["assess"]["strategy"]


def test_a_tournament_with_a_failing_contender_compares_the_others(store, bucket, demo, small_target, run_dag):
    # freeze_layers only matters to partial_freeze: this ResNet-18 has 5 blocks, so 99 fails it alone, at once.
    result = run_dag("tl_tournament", conf(demo, small_target, bucket, freeze_layers=99))
    assert result.state == "success", result.failures
    assert result.task_states["partial_freeze.train"] == "failed" and result.tries["partial_freeze.train"] == 1
    assert result.task_states["partial_freeze.evaluate"] == "upstream_failed"
    summary = result.xcoms["tournament"]
    assert set(summary["finished"]) == {"feature_extraction", "full_finetune", "from_scratch"}
    assert list(summary["failed"]) == ["partial_freeze"]
    assert (
        "partial_freeze.train: InvalidArgumentError: Argument freeze_layers accepts only 0…5"
        in (summary["failed"]["partial_freeze"])
    )

    # Every finished contender has a registry version of its own, tested on the same images; none was promoted
    # by its own evaluation, and the winner is the best of them by the gate metric.
    registry = Registry(store, f"s3://{bucket}/registry", "digits")
    scores = {}
    for strategy in summary["finished"]:
        evaluated = result.xcoms[f"{strategy}.evaluate"]
        assert allocation(registry, evaluated["version"]) == {
            "version": evaluated["version"], "dag_id": "tl_tournament", "run_id": result.run_id, "candidate": strategy,
        }  # fmt: skip
        assert not evaluated["promoted"] and evaluated["reason"] == "promotion disabled (promote=False)"
        scores[strategy] = registry.read_metrics(evaluated["version"])["summary"]
    assert len({s["n"] for s in scores.values()}) == 1
    assert registry.versions() == ["v1", "v2", "v3"]  # one short name per finished contender
    assert summary["winner"] == max(scores, key=lambda s: scores[s]["accuracy"])
    assert summary["score"] == scores[summary["winner"]]["accuracy"]

    # The winner went through the gate: the first champion of a fresh registry.
    assert summary["promoted"] and summary["reason"] == "there is no champion yet"
    champion = json.loads(store.get_bytes(f"s3://{bucket}/registry/digits/champion.json"))
    assert champion["version"] == summary["version"] and champion["strategy"] == summary["winner"]
    assert [e["version"] for e in registry.history()] == [summary["version"]]
    # The model's Asset gets one event, the tournament's, naming the winning version and that it now serves.
    from tests.integration.test_pipelines import asset_event_extras

    (event,) = asset_event_extras(result.run_id)
    assert {k: event[k] for k in ("version", "promoted", "winner")} == {
        "version": summary["version"], "promoted": True, "winner": summary["winner"],
    }  # fmt: skip

    report = store.get_bytes(summary["report_uri"]).decode()
    assert report.count("<tr>") == 5 and "failed: partial_freeze.train: InvalidArgumentError" in report
    advised = result.xcoms["assess"]["strategy"]
    assert summary["advised"] == advised and f"The advisor picked {advised}" in report
    document = json.loads(store.get_bytes(summary["report_uri"].replace("tournament.html", "tournament.json")))
    assert [c["strategy"] for c in document["contenders"]][-1] == "partial_freeze"


def test_a_tournament_whose_every_contender_fails_fails_the_run(store, bucket, demo, small_target, run_dag):
    result = run_dag("tl_tournament", conf(demo, small_target, bucket, freeze_layers=99, strategies=["partial_freeze"]))
    assert result.state == "failed"
    assert {result.task_states[f"{s}.train"] for s in STRATEGIES if s != "partial_freeze"} == {"skipped"}
    assert result.task_states["tournament"] == "failed" and result.tries["tournament"] == 1
    assert not Registry(store, f"s3://{bucket}/registry", "digits").versions()


@pytest.mark.parametrize("dag_id", ["tl_tournament"])
def test_an_unknown_strategy_is_a_param_error_listing_the_valid_ones(run_dag, dag_id):
    with pytest.raises(Exception, match="'bagging' is not one of \\['feature_extraction', 'partial_freeze'") as err:
        run_dag(dag_id, {"strategies": ["full_finetune", "bagging"]})
    assert "ParamValidationError" in type(err.value).__name__ or "Invalid input for param" in str(err.value)
