"""S3Store through the real path: Airflow connection -> S3Hook -> boto3 -> HTTP -> moto server."""

from __future__ import annotations

import io

import pytest

from airflow_tl.exceptions import AirflowTLError, ObjectNotFoundError


def test_put_get_list_delete_round_trip(store, bucket):
    store.put_bytes(f"s3://{bucket}/a/x.bin", b"one")
    store.put_bytes(f"s3://{bucket}/a/y/z.bin", b"two")
    store.put_bytes(f"s3://{bucket}/ab/w.bin", b"not under a/")
    assert store.get_bytes(f"s3://{bucket}/a/x.bin") == b"one"
    assert [o.key for o in store.list(f"s3://{bucket}/a")] == ["a/x.bin", "a/y/z.bin"]
    assert store.exists(f"s3://{bucket}/a/x.bin") and not store.exists(f"s3://{bucket}/a/nope")
    assert store.delete_folder(f"s3://{bucket}/a/") == 2
    assert [o.key for o in store.list(f"s3://{bucket}")] == ["ab/w.bin"]


def test_download_hashes_while_streaming(store, bucket):
    import hashlib

    data = bytes(range(256)) * 20_000  # 5 MB, several read chunks
    store.put_bytes(f"s3://{bucket}/big.bin", data)
    sink = io.BytesIO()
    assert store.download_to(f"s3://{bucket}/big.bin", sink) == hashlib.sha256(data).hexdigest()
    assert sink.getvalue() == data


def test_missing_key_names_the_uri(store, bucket):
    with pytest.raises(ObjectNotFoundError, match=f"No object at s3://{bucket}/missing.bin"):
        store.get_bytes(f"s3://{bucket}/missing.bin")


def test_missing_bucket_names_the_bucket(store):
    with pytest.raises(ObjectNotFoundError, match="Bucket 'tl-no-such-bucket' does not exist"):
        store.get_bytes("s3://tl-no-such-bucket/x")
    with pytest.raises(ObjectNotFoundError, match="tl-no-such-bucket"):
        store.list("s3://tl-no-such-bucket/prefix")


def test_client_retries_throttling_and_5xx(store, local_s3):
    config = store.client.meta.config
    assert config.retries["mode"] == "standard" and config.retries["total_max_attempts"] == 8
    assert store.client.meta.endpoint_url == local_s3.endpoint_url


def test_connection_config_overrides_default_retries(local_s3, monkeypatch):
    import json

    from airflow_tl.hooks.s3 import s3_store

    conn = json.loads(local_s3.connection_uri())
    conn["extra"]["config_kwargs"] = {"retries": {"mode": "adaptive", "max_attempts": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_TL_CUSTOM", json.dumps(conn))
    config = s3_store("tl_custom").client.meta.config
    assert config.retries["mode"] == "adaptive" and config.retries["total_max_attempts"] == 4  # 3 retries


def test_conditional_put_writes_only_over_what_the_writer_saw(store, bucket):
    uri = f"s3://{bucket}/pointer.json"
    assert store.get_with_etag(uri) is None
    assert store.put_if(uri, b"first", etag=None)  # create: only while absent
    assert not store.put_if(uri, b"second", etag=None)
    data, etag = store.get_with_etag(uri)
    assert data == b"first"
    assert store.put_if(uri, b"third", etag=etag)  # replace: only while still at the ETag read
    assert not store.put_if(uri, b"fourth", etag=etag)
    assert store.get_bytes(uri) == b"third"


def test_copy_is_server_side_and_names_a_missing_source(store, bucket):
    store.put_bytes(f"s3://{bucket}/a/x.bin", b"payload")
    store.copy(f"s3://{bucket}/a/x.bin", f"s3://{bucket}/b/x.bin")
    assert store.get_bytes(f"s3://{bucket}/b/x.bin") == b"payload"
    with pytest.raises(AirflowTLError, match=f"s3://{bucket}/a/missing.bin"):
        store.copy(f"s3://{bucket}/a/missing.bin", f"s3://{bucket}/b/missing.bin")
