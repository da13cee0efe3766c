"""Data manifests: a reproducible gzip JSON of which images were in which split, and what changed between two."""

from __future__ import annotations

import gzip
import json

import pytest

from airflow_tl.data.manifest import DataManifest, InvalidManifestError, describe_change


def manifest(**splits) -> DataManifest:
    full = {"train": [], "val": [], "test": [], **splits}
    classes = sorted({key.split("/")[1] for pairs in full.values() for key, _ in pairs})
    return DataManifest("s3://b/data", "f" * 64, classes, full)


BASE = manifest(
    train=[("data/cat/1.png", "e1"), ("data/dog/2.png", "e2")],
    val=[("data/cat/3.png", "e3")],
    test=[("data/dog/4.png", "e4")],
)


def test_round_trip_and_the_documented_fields():
    raw = BASE.to_bytes()
    document = json.loads(gzip.decompress(raw))
    assert set(document) == {"format_version", "dataset_uri", "fingerprint", "class_names", "splits"}
    assert document["splits"]["train"] == [["data/cat/1.png", "e1"], ["data/dog/2.png", "e2"]]
    assert DataManifest.from_bytes(raw, uri="s3://b/m.json.gz") == BASE
    assert BASE.keys("train", "val") == {"data/cat/1.png", "data/dog/2.png", "data/cat/3.png"}


def test_the_same_manifest_always_compresses_to_the_same_bytes():
    assert BASE.to_bytes() == manifest(**BASE.splits).to_bytes()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not gzip", "not gzip-compressed JSON"),
        (gzip.compress(b"[1, 2]"), "expected a JSON object"),
        (gzip.compress(b'{"dataset_uri": "s3://b/d"}'), "missing field 'fingerprint'"),
        (
            gzip.compress(
                json.dumps(
                    {"dataset_uri": "", "fingerprint": "", "class_names": [], "splits": {"train": [["k"]]}}
                ).encode()
            ),
            "lists of [key, etag] pairs",
        ),
    ],
)
def test_bad_manifests_name_the_uri_and_the_problem(raw, problem):
    with pytest.raises(InvalidManifestError) as err:
        DataManifest.from_bytes(raw, uri="s3://b/v/data_manifest.json.gz")
    assert "s3://b/v/data_manifest.json.gz" in str(err.value) and problem in str(err.value)


def test_describe_change_names_classes_and_images():
    grown = manifest(
        train=[("data/cat/1.png", "e1"), ("data/dog/2.png", "CHANGED"), ("data/bird/9.png", "e9")],
        val=[],
        test=[("data/dog/4.png", "e4"), ("data/cat/3.png", "e3")],
    )
    text = describe_change(BASE, grown)
    assert "class folders appeared: bird" in text
    assert "1 images added (e.g. data/bird/9.png)" in text
    assert "1 images changed (e.g. data/dog/2.png)" in text
    assert "1 images moved to another split (e.g. data/cat/3.png)" in text
    shrunk = manifest(train=[("data/cat/1.png", "e1")], val=[("data/cat/3.png", "e3")])
    text = describe_change(BASE, shrunk)
    assert "class folders vanished: dog" in text and "2 images removed" in text
