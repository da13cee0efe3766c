"""DAG files and operator modules stay light and load cleanly: Airflow re-imports them constantly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ("torch", "torchvision", "sklearn", "boto3", "botocore", "matplotlib", "pyarrow")
STRATEGY_DAGS = ["tl_feature_extraction", "tl_from_scratch", "tl_full_finetune", "tl_partial_freeze"]
MULTI_DAGS = ["tl_auto", "tl_tournament"]
DATA_DAGS = ["tl_land_images", "tl_prepare_shards", "tl_retrain_on_data"]  # tl_land_images: in tl_retrain_on_data.py
SCALE_DAGS = ["tl_full_finetune_multinode"]
DAG_IDS = sorted(["tl_fetch_pretrained", "tl_predict", *STRATEGY_DAGS, *MULTI_DAGS, *DATA_DAGS, *SCALE_DAGS])
DAG_FILE_NAMES = sorted(f"{dag_id}.py" for dag_id in DAG_IDS if dag_id != "tl_land_images")

_PROBE = """
import importlib, importlib.util, sys
target = sys.argv[1]
if target.endswith(".py"):
    spec = importlib.util.spec_from_file_location("dag_under_test", target)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
else:
    importlib.import_module(target)
print(" ".join(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _heavy_modules_after_import(target: str) -> str:
    probe = _PROBE.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe, target], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_there_are_dag_files():
    assert [f.name for f in DAG_FILES] == DAG_FILE_NAMES


@pytest.mark.parametrize(
    "target",
    [
        *(str(f) for f in DAG_FILES),
        "airflow_tl",
        "airflow_tl.operators",
        "airflow_tl.pipelines",
        "airflow_tl.get_provider_info",
    ],
)
def test_import_pulls_in_no_heavy_library(target):
    assert _heavy_modules_after_import(target) == ""


def test_dagbag_loads_every_dag_file_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == DAG_IDS
    dag = bag.dags["tl_fetch_pretrained"]
    assert dag.doc_md and dag.params["pretrained_uri"].startswith("s3://")


@pytest.mark.parametrize("dag_id", STRATEGY_DAGS)
def test_strategy_dags_are_documented_typed_retried_and_declare_the_model_asset(dag_id):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Asset

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]
    strategy = dag_id.removeprefix("tl_")
    assert f"`{strategy}`" in dag.doc_md and "Serves:" in dag.doc_md and "similarity" in dag.doc_md
    assert type(dag.timetable).__name__ == "NullTimetable"  # no schedule unless configured
    for name in ("dataset_uri", "registry_uri", "model_name", "epochs", "batch_size", "learning_rate", "seed"):
        param = dag.params.get_param(name)
        assert param.description and param.schema.get("type"), name
    assert dag.params.get_param("epochs").schema["minimum"] == 1
    assert ("freeze_layers" in dag.params) == (strategy == "partial_freeze")
    assert ("architecture" in dag.params) == (strategy == "from_scratch")
    assert [t.task_id for t in dag.tasks][-1] == "evaluate"
    for task in dag.tasks:
        assert task.retries >= 1 and task.execution_timeout is not None, task.task_id
    (outlet,) = dag.get_task("evaluate").outlets
    assert isinstance(outlet, Asset) and outlet.uri == "x-airflow-tl://airflow-tl-demo/registry/digits-5-9"


@pytest.mark.parametrize("dag_id", MULTI_DAGS)
def test_multi_strategy_dags_hold_every_strategy_in_its_own_group(dag_id):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]
    groups = {t.task_group.group_id for t in dag.tasks if t.task_group and t.task_group.group_id}
    assert groups == {"feature_extraction", "partial_freeze", "full_finetune", "from_scratch"}
    assert dag.get_task("assess").upstream_task_ids == {"fetch_pretrained"}
    for name in ("epochs", "batch_size", "learning_rate"):  # null: each strategy's own default
        assert (
            dag.params.get_param(name).value is None and "each strategy's own" in dag.params.get_param(name).description
        )
    assert dag.params["max_images"] == 2000 and "docs/choosing.md" in dag.doc_md
    for task in dag.tasks:
        assert (
            task.retries >= 1 and task.execution_timeout is not None or task.task_id.startswith(("choose", "enter"))
        ), task.task_id
    if dag_id == "tl_auto":
        assert dag.params["strategy"] == "auto"
        assert dag.get_task("choose_strategy").downstream_task_ids == {
            "feature_extraction.extract_features", "partial_freeze.train", "full_finetune.train", "from_scratch.train",
        }  # fmt: skip
    else:
        assert dag.params["strategies"] == ["feature_extraction", "partial_freeze", "full_finetune", "from_scratch"]
        tournament = dag.get_task("tournament")
        assert tournament.trigger_rule == "all_done"
        assert tournament.upstream_task_ids == {"assess", *(f"{g}.evaluate" for g in groups)}
        assert all(dag.get_task(f"{g}.evaluate").promote is False for g in groups)


def test_ruff_airflow_and_banned_import_rules_are_clean():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "check", "--select", "AIR,TID253", "--output-format", "concise", "dags", "airflow_tl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", ["dags/new_dag.py", "airflow_tl/operators/new_operator.py", "airflow_tl/__init__.py"])
def test_ruff_bans_torch_at_module_level_where_airflow_parses(path):
    """The lint rule itself bites: torch imported at the top of a parsed module is reported."""
    ruff = Path(sys.executable).with_name("ruff")
    source = "import torch\n\nprint(torch.__version__)\n"
    command = [str(ruff), "check", "--output-format", "concise", "--stdin-filename", path, "-"]
    done = subprocess.run(command, input=source, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "`torch` is banned at the module level" in done.stdout


def test_tl_predict_runs_when_the_champion_or_the_images_change_and_takes_its_locations_from_the_environment():
    env = {
        "AIRFLOW_TL_PREDICT_DATASET": "s3://photos/inbox",
        "AIRFLOW_TL_PREDICT_REGISTRY": "s3://models/registry",
        "AIRFLOW_TL_PREDICT_MODEL": "flowers",
        "AIRFLOW_TL_PREDICT_OUTPUT": "s3://photos/predictions",
    }
    probe = """
import importlib.util, json
spec = importlib.util.spec_from_file_location("tl_predict", "dags/tl_predict.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.dag
condition = dag.timetable.asset_condition
print(json.dumps({"kind": type(condition).__name__, "assets": sorted(a.uri for a in condition.objects),
                  "params": {k: dag.params[k] for k in ("dataset_uri", "registry_uri", "model_name", "output_uri")},
                  "max_active_runs": dag.max_active_runs, "tasks": [t.task_id for t in dag.tasks]}))
"""
    import json
    import os

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=os.environ | env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["kind"] == "AssetAny"
    assert found["assets"] == ["x-airflow-tl-data://photos/inbox", "x-airflow-tl://models/registry/flowers"]
    assert found["params"] == {"dataset_uri": "s3://photos/inbox", "registry_uri": "s3://models/registry",
                               "model_name": "flowers", "output_uri": "s3://photos/predictions"}  # fmt: skip
    assert found["max_active_runs"] == 1 and found["tasks"] == ["predict"]
