"""S3Store through the real path: Airflow connection -> S3Hook -> boto3 -> HTTP -> moto server."""

from __future__ import annotations

import io

import pytest

from airflow_tl.exceptions import AirflowTLError, ObjectNotFoundError, PermanentError


def test_put_get_list_delete_round_trip(store, bucket):
    store.put_bytes(f"s3://{bucket}/a/x.bin", b"one")
    store.put_bytes(f"s3://{bucket}/a/y/z.bin", b"two")
    store.put_bytes(f"s3://{bucket}/ab/w.bin", b"not under a/")
    assert store.get_bytes(f"s3://{bucket}/a/x.bin") == b"one"
    assert [o.key for o in store.list(f"s3://{bucket}/a")] == ["a/x.bin", "a/y/z.bin"]
    assert store.exists(f"s3://{bucket}/a/x.bin") and not store.exists(f"s3://{bucket}/a/nope")
    assert store.delete_folder(f"s3://{bucket}/a/") == 2
    assert [o.key for o in store.list(f"s3://{bucket}")] == ["ab/w.bin"]


@pytest.mark.parametrize("threads", [2, 3, 16])
def test_listing_folders_concurrently_finds_what_one_listing_finds(store, bucket, threads):
    keys = [
        "d/loose.png", "d/", "d/train/", "d/train/cat/1.png", "d/train/cat/sub/2.png", "d/train/dog/3.png",
        "d/val/cat/4.png", "d/val/dog/", "d/test/x.png", "d/empty/", "d/zeta/deep/er/5.png", "dx/not-under-d.png",
        "d/café (2)/6.png", "d/a b/7.png",
    ]  # fmt: skip
    for n, key in enumerate(keys):
        store.put_bytes(f"s3://{bucket}/{key}", b"x" * n)
    one = store.list(f"s3://{bucket}/d")
    many = store.list(f"s3://{bucket}/d", threads=threads)
    assert [(o.key, o.size, o.etag) for o in many] == [(o.key, o.size, o.etag) for o in one]
    assert [o.key for o in one] == sorted(k for k in keys if k.startswith("d/"))
    assert many[0].uri == f"s3://{bucket}/d/"
    assert store.list(f"s3://{bucket}/nothing-here", threads=threads) == []
    with pytest.raises(ObjectNotFoundError, match="Bucket 'tl-no-such-bucket' does not exist"):
        store.list("s3://tl-no-such-bucket/d", threads=threads)


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
    with pytest.raises(ObjectNotFoundError, match="Bucket 'tl-no-such-bucket' does not exist"):
        store.get_with_etag("s3://tl-no-such-bucket/champion.json")  # not "no champion yet"


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


# --- faults, through tests/faultproxy.py between boto3 and moto ---------------------------------------------------


def test_reads_survive_responses_reset_mid_body(store, bucket, proxy, faulty, caplog):
    import hashlib

    from tests.faultproxy import Fault

    data = bytes(range(256)) * 8_000  # 2 MB
    uri = f"s3://{bucket}/data/blob.bin"
    store.put_bytes(uri, data)
    via = faulty()
    sink = io.BytesIO()
    sink.write(b"header")
    with proxy.scenario(Fault("reset", methods=("GET",), min_body=1, every=2)):
        assert via.get_bytes(uri) == data
        assert via.get_with_etag(uri)[0] == data
        assert via.download_to(uri, sink) == hashlib.sha256(data).hexdigest()
        assert [o.uri for o in via.list(f"s3://{bucket}/data")] == [uri]
    assert sink.getvalue() == b"header" + data  # the broken try was cut away, not appended to
    assert proxy.injected["reset"] == 4 and proxy.requests == 8
    # botocore tries a broken listing again itself; a broken object body is the store's to read again.
    assert any("list-type=2" in e.path for e in proxy.events)
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 3 and all(f"broke off mid-body while reading {uri}:" in m for m in retries)


def test_a_missing_object_whose_error_answer_broke_off_is_still_missing(bucket, proxy, faulty):
    from tests.faultproxy import Fault

    with proxy.scenario(Fault("reset", min_body=1, every=2)):
        with pytest.raises(ObjectNotFoundError, match=f"No object at s3://{bucket}/absent.json"):
            faulty().get_bytes(f"s3://{bucket}/absent.json")
    assert proxy.injected["reset"] == 1 and proxy.requests == 2


def test_body_retries_are_bounded_and_name_the_uri(store, bucket, proxy, faulty):
    from airflow_tl.storage.s3 import BrokenResponseError
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/always-broken.bin"
    store.put_bytes(uri, b"x" * 100_000)
    with proxy.scenario(Fault("reset", min_body=1)), pytest.raises(BrokenResponseError) as err:
        faulty(attempts=3).get_bytes(uri)
    assert f"Gave up reading {uri}: the response broke off mid-body in all 3 attempts" in str(err.value)
    assert not isinstance(err.value, PermanentError)  # Airflow's retries may still get through
    assert proxy.requests == 3


def test_access_denied_fails_at_once(store, bucket, proxy, faulty):
    from airflow_tl.exceptions import AccessDeniedError
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/secret.json"
    store.put_bytes(uri, b"{}")
    via = faulty()
    with proxy.scenario(Fault("deny", path="secret")):
        with pytest.raises(AccessDeniedError, match=f"Access denied \\(AccessDenied\\) while reading {uri}"):
            via.get_bytes(uri)
        with pytest.raises(AccessDeniedError, match=f"while checking {uri}"):
            via.exists(uri)
        with pytest.raises(AccessDeniedError, match=f"while writing {uri}"):
            via.put_bytes(uri, b"[]")
    assert proxy.requests == 3  # neither botocore nor the store tried again
    assert store.get_bytes(uri) == b"{}"


def test_persistent_5xx_fails_after_the_clients_retries_naming_the_uri(store, bucket, proxy, faulty):
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/pointer.json"
    store.put_bytes(uri, b"{}")
    via = faulty(retries={"mode": "standard", "total_max_attempts": 3})
    with proxy.scenario(Fault("internal")), pytest.raises(AirflowTLError) as err:
        via.get_bytes(uri)
    assert f"InternalError (HTTP 500) while reading {uri}, after the client's retries" in str(err.value)
    assert not isinstance(err.value, (PermanentError, ObjectNotFoundError))
    assert proxy.injected["internal"] == proxy.requests == 3


def test_slowdown_bursts_are_absorbed_by_the_clients_retries(store, bucket, proxy, faulty):
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/busy.json"
    via = faulty()
    with proxy.scenario(Fault("slowdown", every=5, burst=3)):
        via.put_bytes(uri, b"{}")
        assert via.get_bytes(uri) == b"{}"
    assert proxy.injected["slowdown"] == 3 and proxy.requests == 5


def test_a_conditional_write_whose_answer_was_lost_is_recognised_as_ours(store, bucket, proxy, faulty):
    """S3 applied the write, the answer never came back; the client's retry then fails its own condition."""
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/champion.json"
    via = faulty()
    with proxy.scenario(Fault("lost", conditional=True, every=2)):
        assert via.put_if(uri, b"first", etag=None)  # create: lost, retried, 412, read back: ours
        _, etag = store.get_with_etag(uri)
        assert via.put_if(uri, b"second", etag=etag)  # replace: the same
        # Refusals whose answers were lost: still refused, as the object holds someone else's bytes.
        assert not via.put_if(uri, b"third", etag=etag)
        assert not via.put_if(uri, b"fourth", etag=None)
    assert proxy.injected["lost"] == 4 and proxy.requests == 8 + 4  # each refusal is followed by a read-back
    assert store.get_bytes(uri) == b"second"


def test_stalled_body_is_read_again_after_the_read_timeout(store, bucket, proxy, faulty):
    from tests.faultproxy import Fault

    uri = f"s3://{bucket}/slow.bin"
    store.put_bytes(uri, b"y" * 500_000)
    via = faulty(read_timeout=0.5)
    with proxy.scenario(Fault("stall", min_body=1, seconds=1.5, limit=1)):
        assert via.get_bytes(uri) == b"y" * 500_000
    assert proxy.injected["stall"] == 1 and proxy.requests == 2


def test_multipart_uploads_left_open_by_a_lost_answer_are_aborted(store, bucket, proxy, faulty, monkeypatch, tmp_path):
    """botocore retries a CreateMultipartUpload whose answer was lost; the first upload stays open unless aborted."""
    from boto3.s3.transfer import TransferConfig

    from airflow_tl.storage import s3
    from tests.faultproxy import Fault

    small = 5 * 2**20  # S3's smallest part, so the test needs 12 MB rather than 100
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", small)
    monkeypatch.setattr(s3, "TRANSFER", TransferConfig(multipart_threshold=small, multipart_chunksize=small))
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (12 * 2**20 // 256))
    via = faulty()
    with proxy.scenario(Fault("reset", methods=("POST",), path=r"\?uploads", limit=1)):
        via.upload_file(str(path), f"s3://{bucket}/big.bin")
        via.copy(f"s3://{bucket}/big.bin", f"s3://{bucket}/copy/big.bin")
    assert proxy.injected["reset"] == 1
    assert store.client.head_object(Bucket=bucket, Key="big.bin")["ETag"].endswith('-3"')
    assert store.get_bytes(f"s3://{bucket}/copy/big.bin") == path.read_bytes()
    assert not store.client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_an_abort_whose_answer_was_lost_does_not_stop_the_other_aborts(store, bucket, proxy, faulty):
    """botocore retries the abort, S3 answers NoSuchUpload (the first one landed), and the next upload is aborted."""
    from airflow_tl.uris import parse_s3_uri
    from tests.faultproxy import Fault

    for _ in range(3):  # uploads left open by lost answers or killed tries
        store.client.create_multipart_upload(Bucket=bucket, Key="ckpt.safetensors")
    with proxy.scenario(Fault("lost", methods=("DELETE",), path=r"uploadId=", limit=1)):
        faulty()._abort_orphaned_uploads(parse_s3_uri(f"s3://{bucket}/ckpt.safetensors"))
    assert proxy.injected["lost"] == 1
    assert not store.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
