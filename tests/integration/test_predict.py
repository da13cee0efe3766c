"""tl_predict through real DAG runs: a champion made by tl_feature_extraction scores images from the local S3.

One registry (one feature-extraction run) serves the module; each test scores its own prefix into its own
output, so the tests do not depend on each other's rows.
"""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.faultproxy import Fault

pytestmark = pytest.mark.integration

MODEL = "digits"


@pytest.fixture(scope="module")
def champion(demo, small_target, run_dag):
    """A registry whose champion (v1) is a head fitted on the small digits 5–9 by tl_feature_extraction."""
    from airflow_tl.hooks.s3 import s3_store

    bucket = f"tl-predict-{uuid.uuid4().hex[:10]}"
    s3_store().ensure_bucket(bucket)
    registry = f"s3://{bucket}/registry"
    conf = {"dataset_uri": small_target, "pretrained_uri": demo.source_model, "registry_uri": registry,
            "work_uri": f"s3://{bucket}/work", "model_name": MODEL}  # fmt: skip
    result = run_dag("tl_test_pipeline_feature_extraction", conf)
    assert result.state == "success", result.failures
    assert result.xcoms["evaluate"]["promoted"], result.xcoms["evaluate"]
    return {"bucket": bucket, "registry_uri": registry, "version": result.xcoms["evaluate"]["version"]}


def _conf(champion, dataset_uri: str, output: str, **extra) -> dict:
    return {"dataset_uri": dataset_uri, "registry_uri": champion["registry_uri"], "model_name": MODEL,
            "output_uri": f"s3://{champion['bucket']}/{output}", **extra}  # fmt: skip


def _rows(store, folder: str, rejects: bool = False):
    """Every row of the parts under ``folder`` (its rejects with ``rejects``), as one pyarrow table."""
    import pyarrow as pa

    from airflow_tl.predict.parts import read_part

    uris = [o.uri for o in store.list(folder) if o.key.endswith(".parquet") and ("/_rejects/" in o.key) == rejects]
    tables = [read_part(store.get_bytes(uri), uri) for uri in uris]
    return pa.concat_tables(tables) if tables else None


def test_predictions_agree_with_evaluation_on_the_test_split(champion, small_target, run_dag, store) -> None:
    import json

    import torch

    from airflow_tl.data.dataset import list_dataset
    from airflow_tl.evaluation.predict import predict
    from airflow_tl.predict.parts import METADATA_KEY
    from airflow_tl.registry.store import Registry

    result = run_dag("tl_test_predict", _conf(champion, f"{small_target}/test", "predictions"))
    assert result.state == "success", result.failures
    summary = result.xcoms["predict"]
    version = champion["version"]
    assert (summary["version"], summary["already_scored"], summary["rejected"]) == (version, 0, 0)
    table = _rows(store, f"s3://{champion['bucket']}/predictions/version={version}")
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == summary["images"] == summary["scored"]

    registry = Registry(store, champion["registry_uri"], MODEL)
    dataset = list_dataset(store, small_target, for_training=False)
    expected = predict(store, registry.version_uri(version), dataset, split="test")
    assert sorted(keys) == sorted(expected.keys)
    row = {key: i for i, key in enumerate(keys)}
    order = [row[key] for key in expected.keys]
    classes = expected.class_names
    ours = torch.tensor(np.stack([table.column(f"prob_{c}").to_numpy() for c in classes], axis=1)[order])
    assert torch.allclose(ours, expected.probs, atol=1e-5)
    predicted = [table.column("predicted_class")[i].as_py() for i in order]
    assert predicted == [classes[i] for i in expected.probs.argmax(dim=1).tolist()]
    # The evaluation's confusion matrix, from the predictions and the class folders the keys are in.
    truth = [key.split("/")[-2] for key in expected.keys]
    confusion = [[0] * len(classes) for _ in classes]
    for p, t in zip(predicted, truth, strict=True):
        confusion[classes.index(t)][classes.index(p)] += 1
    assert confusion == registry.read_metrics(version)["metrics"]["confusion"]
    assert set(table.column("model_version").to_pylist()) == {version}
    metadata = json.loads(table.schema.metadata[METADATA_KEY])
    assert metadata["model_sha256"] == registry.read_metrics(version)["model_sha256"]
    assert metadata["class_names"] == classes


def _photo(pixels: Image.Image, kind: str) -> bytes:
    """One digit as buckets hold photos: EXIF-rotated JPEG, CMYK JPEG, 16-bit PNG, or WebP."""
    out = io.BytesIO()
    if kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated 90° clockwise for display: stored sideways
        pixels.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", exif=exif, quality=95)
    elif kind == "cmyk":
        pixels.convert("RGB").convert("CMYK").save(out, "JPEG", quality=95)
    elif kind == "16bit":
        array = (np.asarray(pixels.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(array).save(out, "PNG")  # uint16: mode I;16
    else:
        pixels.convert("RGB").save(out, "WEBP", quality=95)
    return out.getvalue()


def test_a_rerun_scores_only_new_or_replaced_images_and_lists_corrupt_ones_in_the_rejects(
    champion, small_target, run_dag, store
) -> None:
    bucket = champion["bucket"]
    sources = sorted(o.uri for o in store.list(f"{small_target}/test"))[:12]
    inbox = f"s3://{bucket}/inbox"
    # Odd folder names and depths, no class folders; formats and encodings as cameras and exports write them.
    for i, uri in enumerate(sources[:8]):
        store.copy(uri, f"{inbox}/Camera Roll/2026 été/#{i} (copy).png")
    image = Image.open(io.BytesIO(store.get_bytes(sources[8])))
    for kind, ext in (("exif", "JPG"), ("cmyk", "jpeg"), ("16bit", "png"), ("webp", "webp")):
        store.put_bytes(f"{inbox}/exports/{kind}/digit.{ext}", _photo(image, kind))
    store.put_bytes(f"{inbox}/notes.txt", b"not an image")
    conf = _conf(champion, inbox, "inbox-predictions", skip_corrupt=True, part_rows=5)
    folder = f"s3://{bucket}/inbox-predictions/version={champion['version']}"

    first = run_dag("tl_test_predict", conf)
    assert first.state == "success", first.failures
    assert (first.xcoms["predict"]["scored"], first.xcoms["predict"]["parts_written"]) == (12, 3)

    for i, uri in enumerate(sources[9:11]):
        store.copy(uri, f"{inbox}/new/{i}.png")
    store.copy(sources[11], f"{inbox}/Camera Roll/2026 été/#0 (copy).png")  # replaced: another image, new ETag
    store.put_bytes(f"{inbox}/new/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    second = run_dag("tl_test_predict", conf)
    assert second.state == "success", second.failures
    summary = second.xcoms["predict"]
    assert (summary["images"], summary["already_scored"], summary["scored"], summary["rejected"]) == (15, 11, 3, 1)
    rejects = _rows(store, folder, rejects=True)
    assert rejects.column("key").to_pylist() == ["inbox/new/broken.png"]
    assert rejects.column("reason")[0].as_py()

    third = run_dag("tl_test_predict", conf)
    assert third.state == "success", third.failures
    assert (third.xcoms["predict"]["scored"], third.xcoms["predict"]["parts_written"]) == (0, 0)
    rows = _rows(store, folder)
    pairs = list(zip(rows.column("key").to_pylist(), rows.column("etag").to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) == 15  # 14 images, one of them scored again after it was replaced
    assert not any(key.endswith(".txt") for key, _ in pairs)


def test_no_champion_unknown_version_and_a_corrupt_image_fail_at_once_naming_them(
    champion, small_target, run_dag, store
) -> None:
    bucket = champion["bucket"]
    empty = f"s3://{bucket}/empty-registry"
    result = run_dag("tl_test_predict", _conf(champion, f"{small_target}/test", "p1") | {"registry_uri": empty})
    assert result.state == "failed" and result.tries["predict"] == 1
    failure = result.failure("predict")
    assert f"{empty}/{MODEL}" in failure["message"] and "no champion" in failure["message"]

    result = run_dag("tl_test_predict", _conf(champion, f"{small_target}/test", "p2", version="v99"))
    assert result.state == "failed" and result.tries["predict"] == 1
    assert (
        "'v99'" in result.failure("predict")["message"] and champion["version"] in result.failure("predict")["message"]
    )

    inbox = f"s3://{bucket}/corrupt-inbox"
    store.copy(sorted(o.uri for o in store.list(f"{small_target}/test"))[0], f"{inbox}/a.png")
    store.put_bytes(f"{inbox}/b.png", b"GIF89a not really")
    result = run_dag("tl_test_predict", _conf(champion, inbox, "p3"))
    assert result.state == "failed" and result.tries["predict"] == 1
    assert f"s3://{bucket}/corrupt-inbox/b.png" in result.failure("predict")["message"]
    assert "skip_corrupt" in result.failure("predict")["message"]


def test_an_interrupted_run_is_finished_by_its_retry_without_duplicate_or_missing_rows(
    champion, small_target, run_dag, store, fault_proxy
) -> None:
    bucket = champion["bucket"]
    inbox = f"s3://{bucket}/interrupted"
    for i, obj in enumerate(sorted(store.list(f"{small_target}/test"), key=lambda o: o.key)[:10]):
        store.copy(obj.uri, f"{inbox}/{i:02d}.png")
    conf = _conf(champion, inbox, "interrupted-predictions", part_rows=3)
    # The second part's PUT fails every attempt of the first try, as if S3 went away mid-run: the try fails with
    # a transient error after its first part, and Airflow retries the task.
    fault = Fault("internal", methods=("PUT",), path=r"/version=[^/]+/part-[^/]+-00001\.parquet", limit=2)
    with pytest.MonkeyPatch.context() as patch, fault_proxy.scenario(fault):
        patch.setenv(
            "AIRFLOW_CONN_AWS_DEFAULT", fault_proxy.connection(retries={"mode": "standard", "total_max_attempts": 2})
        )
        result = run_dag("tl_test_predict", conf)
        injected = fault_proxy.injected
    assert result.state == "success", result.failures
    assert result.tries["predict"] == 2 and injected["internal"] == 2
    assert result.xcoms["predict"]["already_scored"] == 3  # the first try's complete part
    rows = _rows(store, f"s3://{bucket}/interrupted-predictions/version={champion['version']}")
    keys = rows.column("key").to_pylist()
    assert sorted(keys) == [f"interrupted/{i:02d}.png" for i in range(10)]
