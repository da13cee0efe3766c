"""Feature shards in S3: written through a file (multipart above the threshold), read back checked."""

from __future__ import annotations

import re

import pytest
import torch

from airflow_tl.exceptions import IntegrityError
from airflow_tl.features.extract import _write_shard, load_split


@pytest.fixture
def small_threshold(monkeypatch):
    """The multipart threshold at S3's smallest part size, so a shard of a few MB takes the large-object path."""
    from boto3.s3.transfer import TransferConfig

    from airflow_tl.storage import s3

    small = 5 * 2**20
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", small)
    monkeypatch.setattr(s3, "TRANSFER", TransferConfig(multipart_threshold=small, multipart_chunksize=small))
    return small


def write_split(store, folder: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    shards = [_write_shard(store, folder, f"train-{i:05d}", [x], [y]) for i, (x, y) in enumerate(batches)]
    return {"feature_dim": batches[0][0].shape[1], "shards": {"train": shards}}


def test_a_large_shard_goes_up_in_parts_and_comes_back_exact(store, bucket, small_threshold):
    folder = f"s3://{bucket}/features/key"
    x = torch.randn(3000, 512, generator=torch.Generator().manual_seed(0))  # 6 MB
    y = torch.arange(3000) % 7
    small_x, small_y = x[:10].clone(), y[:10].clone()
    index = write_split(store, folder, [(x, y), (small_x, small_y)])

    big, little = index["shards"]["train"]
    assert (big["rows"], little["rows"]) == (3000, 10)
    etags = {o.key.rsplit("/", 1)[-1]: o.etag for o in store.list(folder)}
    assert re.fullmatch(r"[0-9a-f]{32}-2", etags[big["file"]])  # two parts
    assert re.fullmatch(r"[0-9a-f]{32}", etags[little["file"]])  # one PUT
    features, labels = load_split(store, folder, index, "train")
    assert torch.equal(features, torch.cat([x, small_x])) and torch.equal(labels, torch.cat([y, small_y]))


def test_a_modified_shard_is_refused(store, bucket):
    folder = f"s3://{bucket}/features/tampered"
    index = write_split(store, folder, [(torch.ones(4, 8), torch.zeros(4, dtype=torch.long))])
    uri = f"{folder}/{index['shards']['train'][0]['file']}"
    data = bytearray(store.get_bytes(uri))
    data[-1] ^= 0x01
    store.put_bytes(uri, bytes(data))
    with pytest.raises(IntegrityError, match=f"sha256 mismatch for features shard {uri}"):
        load_split(store, folder, index, "train")
