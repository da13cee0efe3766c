"""The DAG factory (airflow_tl.pipelines): strategies as data, settings checked, schedules from the environment."""

from __future__ import annotations

import pytest

from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.pipelines import STRATEGIES, build_dag, build_task_group, get_strategy, schedule_from_env


def test_the_four_strategies_cover_the_size_by_similarity_matrix():
    quadrants = {(s.data, s.similarity): name for name, s in STRATEGIES.items()}
    assert quadrants == {
        ("small", "high"): "feature_extraction",
        ("small", "low"): "partial_freeze",
        ("large", "high"): "full_finetune",
        ("large", "low"): "from_scratch",
    }


def test_an_unknown_strategy_names_the_argument_and_the_valid_ones():
    message = (
        "Argument strategy accepts only 'feature_extraction', 'partial_freeze', 'full_finetune' and 'from_scratch'. "
        "Provided value: 'transfer_everything'."
    )
    with pytest.raises(InvalidArgumentError) as err:
        build_dag("transfer_everything")
    assert str(err.value) == message
    with pytest.raises(InvalidArgumentError):
        get_strategy("")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("none", None), ("@weekly", "@weekly"), ("0 3 * * 1", "0 3 * * 1")],
)
def test_schedule_comes_from_the_environment(monkeypatch, value, expected):
    name = "AIRFLOW_TL_SCHEDULE_TL_FULL_FINETUNE"
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    assert schedule_from_env("tl_full_finetune") == expected


def test_a_scheduled_dag_gets_a_cron_timetable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_TL_SCHEDULE_TL_NIGHTLY", "0 3 * * *")
    dag = build_dag("full_finetune", dag_id="tl_nightly")
    assert type(dag.timetable).__name__ == "CronTriggerTimetable" and dag.timetable.expression == "0 3 * * *"
    assert "AIRFLOW_TL_SCHEDULE_TL_NIGHTLY" in dag.doc_md


def test_param_defaults_can_be_overridden_per_dag():
    dag = build_dag("partial_freeze", dag_id="tl_pf", param_defaults={"freeze_layers": 2, "epochs": 20})
    assert (dag.params["freeze_layers"], dag.params["epochs"]) == (2, 20)
    assert dag.params["learning_rate"] == STRATEGIES["partial_freeze"].defaults["learning_rate"]


def test_feature_extraction_trains_on_features_and_the_others_on_images():
    for name in STRATEGIES:
        dag = build_dag(name, dag_id=f"tl_x_{name}")
        train = dag.get_task("train")
        if name == "feature_extraction":
            assert train.features_uri and not train.dataset_uri and train.freeze_layers == "all"
            assert dag.get_task("extract_features").upstream_task_ids == {"fetch_pretrained"}
        else:
            assert train.dataset_uri == "{{ params.dataset_uri }}" and not train.features_uri
        assert train.init == ("random" if name == "from_scratch" else "pretrained")
        assert dag.get_task("evaluate").upstream_task_ids == {"train"}


def test_a_task_group_needs_its_locations():
    from airflow.sdk import DAG

    with DAG(dag_id="user_dag", schedule=None), pytest.raises(InvalidArgumentError) as err:
        build_task_group("full_finetune", settings={"dataset_uri": "s3://b/d", "epochs": 2, "lr": 1})
    assert "missing: model_name, pretrained_uri, registry_uri, work_uri" in str(err.value)
    assert "unknown: lr" in str(err.value)


def test_a_task_group_prefixes_its_tasks_and_pulls_xcoms_within_itself():
    from airflow.sdk import DAG

    with DAG(dag_id="user_dag", schedule=None) as dag:
        build_task_group(
            "from_scratch",
            group_id="nightly",
            settings={"dataset_uri": "s3://b/d", "architecture": "resnet18", "registry_uri": "s3://b/r",
                      "model_name": "m", "work_uri": "s3://b/w"},
        )  # fmt: skip
    assert sorted(dag.task_ids) == ["nightly.evaluate", "nightly.fetch_pretrained", "nightly.train"]
    assert "task_ids='nightly.fetch_pretrained'" in dag.get_task("nightly.train").model_uri
    assert dag.get_task("nightly.train").epochs == STRATEGIES["from_scratch"].defaults["epochs"]
    assert {t.retries for t in dag.tasks} == {2}  # the factory's retries, so training resumes from checkpoints


def test_every_param_default_can_be_overridden_and_unknown_ones_are_refused():
    overrides = {"image_size": 64, "gate_metric": "macro_f1", "min_score": 0.8, "augment": True, "skip_corrupt": True}
    dag = build_dag("full_finetune", dag_id="tl_ff", param_defaults=overrides)
    assert {name: dag.params[name] for name in overrides} == overrides
    with pytest.raises(InvalidArgumentError, match="unknown Params for full_finetune: freeze_layers"):
        build_dag("full_finetune", dag_id="tl_ff2", param_defaults={"freeze_layers": 2})
    scratch = build_dag("from_scratch", dag_id="tl_fs")
    # No demo settings as product defaults: the architecture's own input size, not the demo's 32 px.
    assert (scratch.params["pretrained_uri"], scratch.params["architecture"], scratch.params["image_size"]) == (
        None, "resnet18", None
    )  # fmt: skip


def test_timeouts_and_retries_can_be_set_per_task():
    from datetime import timedelta

    dag = build_dag(
        "partial_freeze", dag_id="tl_pf_t", timeouts={"train": timedelta(hours=30)}, default_args={"retries": 5}
    )
    assert dag.get_task("train").execution_timeout == timedelta(hours=30)
    assert dag.get_task("evaluate").execution_timeout == timedelta(hours=2)
    assert {t.retries for t in dag.tasks} == {5}


@pytest.mark.parametrize("strategy", ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"])
def test_the_optimisers_knobs_are_typed_params_with_trainconfigs_defaults_and_ranges(strategy):
    from airflow_tl.pipelines import build_dag
    from airflow_tl.training.config import TrainConfig

    dag = build_dag(strategy, dag_id=f"knobs_{strategy}", schedule=None)
    params = {name: dag.params.get_param(name) for name in
              ("optimizer", "weight_decay", "warmup_epochs", "layer_decay", "label_smoothing")}  # fmt: skip
    assert {name: p.value for name, p in params.items()} == {name: getattr(TrainConfig(), name) for name in params}
    assert params["optimizer"].schema["enum"] == ["adamw", "sgd"]
    assert params["label_smoothing"].schema["exclusiveMaximum"] == 1 and params["layer_decay"].schema["maximum"] == 1
    assert all(p.description for p in params.values())
    assert ("not used" in params["optimizer"].description) == (strategy == "feature_extraction")
    # Every task of the DAG refuses a conf key that is not one of its Params.
    assert all(sorted(task.allowed_conf) == sorted(dag.params) for task in dag.tasks if hasattr(task, "allowed_conf"))


def test_the_fetch_task_checks_freeze_layers_where_a_param_sets_it():
    from airflow_tl.pipelines.multi import AUTO_FREEZE_LAYERS, build_auto_dag, build_tournament_dag

    for name in STRATEGIES:
        fetch = build_dag(name, dag_id=f"tl_f_{name}").get_task("fetch_pretrained")
        # The strategies' own values ("all", 0) fit every model; only partial_freeze's Param can be wrong.
        assert fetch.freeze_layers == ("{{ params.freeze_layers }}" if name == "partial_freeze" else None)
        assert "freeze_layers" in fetch.template_fields
    assert build_auto_dag("tl_a").get_task("fetch_pretrained").freeze_layers == AUTO_FREEZE_LAYERS
    # A tournament lets the partial_freeze contender fail alone (tests/integration/test_choosing.py).
    assert build_tournament_dag("tl_t").get_task("fetch_pretrained").freeze_layers is None


@pytest.mark.parametrize(
    ("strategy", "checked"), [("auto", 4), ("partial_freeze", 4), ("feature_extraction", None), ("from_scratch", None)]
)
def test_tl_auto_checks_freeze_layers_only_when_partial_freeze_may_run(strategy, checked):
    from jinja2.nativetypes import NativeEnvironment  # what render_template_as_native_obj renders with

    from airflow_tl.pipelines.multi import AUTO_FREEZE_LAYERS

    params = {"freeze_layers": 4, "strategy": strategy}
    assert NativeEnvironment().from_string(AUTO_FREEZE_LAYERS).render(params=params) == checked
