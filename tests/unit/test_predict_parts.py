"""The Parquet parts of tl_predict and its arguments: pure logic, no S3."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from airflow_tl.exceptions import PermanentError
from airflow_tl.predict.parts import (
    METADATA_KEY,
    PredictionPartError,
    new_token,
    part_name,
    predictions_table,
    read_part,
    rejects_table,
    table_bytes,
    version_folder,
)
from airflow_tl.predict.task import PredictSpec
from airflow_tl.uris import parse_s3_uri

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def test_a_predictions_part_holds_key_class_confidence_and_a_probability_per_class() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    classes = ["cat", "dog", "red fox"]
    table = predictions_table(["a/1.jpg", "b/2.png"], ["e1", "e2"], probs, classes, "v3", NOW, {"model_version": "v3"})
    back = read_part(table_bytes(table), "s3://b/p.parquet")
    assert back.column_names == [
        "key", "etag", "predicted_class", "confidence", "prob_cat", "prob_dog", "prob_red fox", "model_version",
        "scored_at",
    ]  # fmt: skip
    assert back.column("predicted_class").to_pylist() == ["dog", "cat"]
    assert back.column("confidence").to_pylist() == pytest.approx([0.7, 0.5])
    assert back.column("prob_red fox").to_pylist() == pytest.approx([0.2, 0.25])
    assert back.column("model_version").to_pylist() == ["v3", "v3"]
    assert back.column("scored_at").to_pylist() == [NOW, NOW]
    assert json.loads(back.schema.metadata[METADATA_KEY]) == {"model_version": "v3"}


def test_a_rejects_part_names_each_image_and_why() -> None:
    table = rejects_table([("x/broken.png", "e9", "truncated file")], "v1", NOW, {})
    back = read_part(table_bytes(table), "s3://b/r.parquet", columns=("key", "etag", "reason"))
    assert back.to_pylist() == [{"key": "x/broken.png", "etag": "e9", "reason": "truncated file"}]


def test_a_file_that_is_not_a_part_is_refused_by_name() -> None:
    with pytest.raises(PredictionPartError, match="s3://b/out/version=v1/part-x.parquet"):
        read_part(b"PAR1 not parquet", "s3://b/out/version=v1/part-x.parquet")


def test_parts_sort_by_the_try_that_wrote_them_and_never_collide() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert part_name("20261130T120000Z-abcd1234", 7) == "part-20261130T120000Z-abcd1234-00007.parquet"
    assert str(version_folder(parse_s3_uri("s3://bucket/preds/"), "v2")) == "s3://bucket/preds/version=v2"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"part_rows": 0}, "part_rows must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"version": " "}, "version must be a version name"),
        ({"output_uri": "s3://data"}, "holds dataset_uri"),
        ({"output_uri": "s3://data/photos"}, "holds dataset_uri"),
        ({"dataset_uri": "/local/photos"}, "dataset_uri"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(changes: dict, message: str) -> None:
    args = {"dataset_uri": "s3://data/photos/2026", "registry_uri": "s3://models/registry", "model_name": "m",
            "output_uri": "s3://data/predictions"} | changes  # fmt: skip
    with pytest.raises(PermanentError, match=message):  # InvalidArgumentError, or InvalidURIError for a URI
        PredictSpec(**args)


def test_predictions_may_live_beside_or_inside_the_images() -> None:
    PredictSpec("s3://data/photos", "s3://models/r", "m", "s3://data/photos-predictions")
    PredictSpec("s3://data/photos", "s3://models/r", "m", "s3://data/photos/predictions")  # left out of the listing
