"""OpenLineage naming of what the operators read and write, credentials left out; and nothing of it without the
extra: operators import no ``openlineage``, and report None when it cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openlineage.client.serde import Serde

from airflow_tl.lineage import DatasetRef, datasets, naming, operator_lineage, registry_outputs

ROOT = Path(__file__).resolve().parents[2]
PIN = "#sha256=" + "ab" * 32


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://tl-data/datasets/digits/", ("s3://tl-data", "datasets/digits")),
        ("s3://tl-data/datasets/digits", ("s3://tl-data", "datasets/digits")),
        ("s3://tl-data/reg/digits/versions/v3", ("s3://tl-data", "reg/digits/versions/v3")),
        ("s3://tl-data", ("s3://tl-data", "/")),  # the bucket itself, as the amazon provider names it
        ("s3://tl-data/", ("s3://tl-data", "/")),
        ("s3://key:secret@tl-data/zoo/m", ("s3://tl-data", "zoo/m")),
        ("https://dl.pytorch.org/models/r-f37072fd.pth", ("https://dl.pytorch.org", "models/r-f37072fd.pth")),
        ("https://Hub.Example:8443/m/x.pth" + PIN, ("https://hub.example:8443", "m/x.pth")),
        ("http://127.0.0.1:9000/", ("http://127.0.0.1:9000", "/")),
        ("torchvision://resnet18/IMAGENET1K_V1", ("torchvision", "resnet18/IMAGENET1K_V1")),
        ("torchvision://efficientnet_b0", ("torchvision", "efficientnet_b0")),
    ],
)  # fmt: skip
def test_names_follow_openlineage_naming(uri, expected):
    assert naming(uri) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://reader:hunter22@h.example/hub/x-1234abcd.pth", ("https://h.example", "hub/x-1234abcd.pth")),
        ("https://ghp_tok123@h.example/x.pth", ("https://h.example", "x.pth")),
        ("https://u:p@ss@h.example/x", ("https://h.example", "x")),  # the last '@' ends the userinfo
        (
            "https://b.s3.amazonaws.com/k.pth?X-Amz-Credential=AKID&X-Amz-Security-Token=FwoG&X-Amz-Signature=4f2a",
            ("https://b.s3.amazonaws.com", "k.pth"),
        ),
        ("https://a.blob.example/c/m.pth?sv=2022&sig=s3cr3t" + PIN, ("https://a.blob.example", "c/m.pth")),
        ("https://h.example/x.pth#access_token=tok", ("https://h.example", "x.pth")),
    ],
)  # fmt: skip
def test_credentials_never_reach_a_name(uri, expected):
    assert naming(uri) == expected
    (dataset,) = datasets([uri])
    text = Serde.to_json(dataset)
    for secret in ("hunter22", "reader", "ghp_tok123", "AKID", "FwoG", "4f2a", "s3cr3t", "tok", "ss@"):
        assert secret not in text


@pytest.mark.parametrize(
    "uri",
    [None, "", "   ", 42, "/local/path", "ftp://h/x", "s3://Not_A_Bucket/x", "s3:///x", "https:///x", "torchvision://"],
)
def test_what_names_no_known_place_is_left_out(uri):
    assert naming(uri) is None
    assert datasets([uri]) == []


def test_repeats_are_one_dataset_in_first_seen_order_with_their_facets_merged():
    found = datasets(
        [
            "s3://tl-data/b/",
            "s3://tl-data/a",
            None,
            DatasetRef("s3://tl-data/b", version="v2"),
            DatasetRef("s3://tl-data/b/", version="v9", tags={"promoted": "true"}),
        ]
    )
    assert [(d.namespace, d.name) for d in found] == [("s3://tl-data", "b"), ("s3://tl-data", "a")]
    assert found[0].facets["version"].datasetVersion == "v2"  # the first said wins
    assert [(t.key, t.value) for t in found[0].facets["tags"].tags] == [("promoted", "true")]
    assert found[1].facets == {}


def test_empty_lists_give_empty_lineage():
    lineage = operator_lineage([], [])
    assert lineage is not None and lineage.inputs == [] and lineage.outputs == []
    assert operator_lineage([None, ""], [None]).outputs == []


def test_a_promoted_version_and_the_champion_that_names_it():
    version_uri = "s3://tl-reg/registry/digits/versions/v4"
    outputs = datasets(registry_outputs("s3://tl-reg/registry/", "digits", "v4", version_uri, promoted=True))
    assert [d.name for d in outputs] == ["registry/digits/versions/v4", "registry/digits/champion.json"]
    assert [d.facets["version"].datasetVersion for d in outputs] == ["v4", "v4"]
    assert [(t.key, t.value) for t in outputs[0].facets["tags"].tags] == [("promoted", "true")]

    kept = datasets(registry_outputs("s3://tl-reg/registry", "digits", "v5", version_uri, promoted=False))
    assert [d.name for d in kept] == ["registry/digits/versions/v4"]
    assert [(t.key, t.value) for t in kept[0].facets["tags"].tags] == [("promoted", "false")]
    # A tournament promotes a version it did not write: only the champion is its output.
    assert [r.uri for r in registry_outputs("s3://tl-reg/r", "m", "v1", None, promoted=True)] == [
        "s3://tl-reg/r/m/champion.json"
    ]
    assert registry_outputs("s3://tl-reg/r", "m", "v1", None, promoted=False) == []


def _names(lineage) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return [(d.namespace, d.name) for d in lineage.inputs], [(d.namespace, d.name) for d in lineage.outputs]


def test_operators_report_what_they_read_and_what_execute_kept():
    from airflow_tl.operators import ChooseStrategyOperator, FetchPretrainedOperator, FreezeAndTrainOperator

    fetch = FetchPretrainedOperator(task_id="fetch", pretrained_uri="https://u:pw-9a@h.example/hub/r-1234abcd.pth")
    fetch._lineage_outputs = ["s3://tl-work/runs/d/r/fetch"]  # what execute keeps
    assert _names(fetch.get_openlineage_facets_on_complete(None)) == (
        [("https://h.example", "hub/r-1234abcd.pth")],
        [("s3://tl-work", "runs/d/r/fetch")],
    )
    scratch = FetchPretrainedOperator(task_id="scratch", architecture="resnet18", init="random")
    assert _names(scratch.get_openlineage_facets_on_complete(None))[0] == [("torchvision", "resnet18")]

    head = FreezeAndTrainOperator(task_id="train", model_uri="s3://tl-w/m", features_uri="s3://tl-w/features/k/")
    assert _names(head.get_openlineage_facets_on_complete(None))[0] == [("s3://tl-w", "m"), ("s3://tl-w", "features/k")]

    choose = ChooseStrategyOperator(task_id="choose", advice={"strategy": "x", "advice_uri": "s3://tl-w/a/advice.json"})
    assert _names(choose.get_openlineage_facets_on_complete(None)) == ([("s3://tl-w", "a/advice.json")], [])

    from airflow_tl.lineage import DatasetRef
    from airflow_tl.operators import PredictOperator

    predict = PredictOperator(task_id="predict", dataset_uri="s3://tl-d/inbox", registry_uri="s3://tl-m/registry",
                              model_name="flowers", output_uri="s3://tl-d/predictions")  # fmt: skip
    assert _names(predict.get_openlineage_facets_on_complete(None)) == ([("s3://tl-d", "inbox")], [])
    predict._lineage_model = DatasetRef("s3://tl-m/registry/flowers/versions/v3", version="v3")  # what execute keeps
    predict._lineage_outputs = [DatasetRef("s3://tl-d/predictions/version=v3", version="v3")]
    assert _names(predict.get_openlineage_facets_on_complete(None)) == (
        [("s3://tl-d", "inbox"), ("s3://tl-m", "registry/flowers/versions/v3")],
        [("s3://tl-d", "predictions/version=v3")],
    )


_IMPORT_ALL = """
import importlib, pkgutil, sys
import airflow_tl.operators
for info in pkgutil.iter_modules(airflow_tl.operators.__path__):
    importlib.import_module(f"airflow_tl.operators.{info.name}")
import airflow_tl.pipelines
airflow_tl.pipelines.build_dag("feature_extraction")
"""

# The client and the whole provider, but for what Airflow's provider discovery loads from the installed package's
# entry point: without the extra there would be no entry point at all.
_BLOCK = """
import importlib.abc, sys

METADATA = {"airflow.providers.openlineage", "airflow.providers.openlineage.get_provider_info"}

class NoOpenLineage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openlineage" or (
            name.startswith("airflow.providers.openlineage.") and name not in METADATA
        ):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, NoOpenLineage())
"""


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_without_the_extra_operators_import_and_report_nothing():
    code = (
        _BLOCK
        + _IMPORT_ALL
        + """
from airflow_tl.operators import ChooseStrategyOperator, FetchPretrainedOperator
fetch = FetchPretrainedOperator(task_id="fetch", pretrained_uri="s3://tl-demo/zoo/m")
fetch._lineage_outputs = ["s3://tl-demo/work/m"]
choose = ChooseStrategyOperator(task_id="choose", advice={"advice_uri": "s3://tl-demo/a/advice.json"})
print(repr([fetch.get_openlineage_facets_on_complete(None), choose.get_openlineage_facets_on_complete(None)]))
"""
    )
    assert _python(code).strip().splitlines()[-1] == "[None, None]"


def test_importing_operators_and_dags_imports_no_openlineage():
    code = (
        _IMPORT_ALL
        + """
import json
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "openlineage")))
"""
    )
    assert json.loads(_python(code).strip().splitlines()[-1]) == []
