"""The pure parts of sharded datasets: the index format, tar parsing, shuffling, packing order, rank shares."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest

from airflow_tl.data.dataset import ImageItem
from airflow_tl.data.errors import ShardError
from airflow_tl.data.shard_reader import _shuffled, group_sizes, rank_shards, shards_of
from airflow_tl.data.shard_writer import packing_order
from airflow_tl.data.shards import ShardEntry, ShardIndex, is_shards_uri, parse_shard, sample_name


def index(**changes) -> ShardIndex:
    fields = {
        "uri": "s3://b/d/shards", "source_uri": "s3://b/d", "fingerprint": "f" * 64, "class_names": ["a", "b"],
        "layout": "classes", "seed": 3, "fractions": (0.7, 0.15, 0.15), "manifest_sha256": "0" * 64,
        "shards": [ShardEntry("train-000000.tar", "train", 5, 100, "1" * 64),
                   ShardEntry("val-000000.tar", "val", 2, 50, "2" * 64)],
        "created_at": "2026-11-29T00:00:00+00:00", "packing": {"shard_mb": 128, "shard_images": 10000},
    }  # fmt: skip
    return ShardIndex(**(fields | changes))


def test_the_index_round_trips_and_counts_its_splits():
    original = index()
    again = ShardIndex.from_bytes(original.to_bytes(), uri=original.uri)
    assert again == original
    assert again.counts() == {"train": 5, "val": 2, "test": 0} and again.of("val") == [1]
    assert json.loads(original.to_bytes())["format"] == "webdataset"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"[1, 2]", r"is not a JSON object"),
        (b"{not json", r"is not a JSON object"),
        (json.dumps({"format_version": 9}).encode(), r"has format_version 9; this airflow-tl reads 1"),
        (json.dumps({"format_version": 1}).encode(), r"cannot be read: KeyError: 'source_uri'"),
    ],
)
def test_an_unreadable_index_is_named(document, message):
    with pytest.raises(ShardError, match=rf"Shard index s3://b/d/shards/index.json {message}"):
        ShardIndex.from_bytes(document, uri="s3://b/d/shards")


def test_an_index_that_contradicts_itself_is_refused():
    twice = [ShardEntry("train-000000.tar", "train", 5, 100, "1" * 64)] * 2
    for shards, message in (
        (twice, "a shard is listed twice"),
        ([ShardEntry("x.tar", "holdout", 5, 100, "1" * 64)], "shard x.tar has split 'holdout'"),
        ([ShardEntry("x.tar", "train", 0, 100, "1" * 64)], "shard x.tar has count 0"),
        ([], "it lists no shards"),
    ):
        with pytest.raises(ShardError, match=message):
            ShardIndex.from_bytes(index(shards=shards).to_bytes(), uri="s3://b/d/shards")


def test_shards_uris_and_sample_names():
    assert is_shards_uri("s3://b/photos/shards") and is_shards_uri("s3://b/photos/shards/")
    assert not is_shards_uri("s3://b/photos") and not is_shards_uri("s3://b/my-shards")
    assert sample_name("val", 42) == "val-000000042" and "." not in sample_name("train", 10**8)


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_parsing_groups_a_samples_files_in_order():
    meta = json.dumps({"key": "d/a/1.JPG", "etag": "e1", "class": "a"}).encode()
    raw = tar_of({"s-1.jpg": b"IMG", "s-1.cls": b"0", "s-1.json": meta, "s-0.png": b"P", "s-0.cls": b"1",
                  "s-0.json": json.dumps({"key": "d/b/0.png", "etag": "e0"}).encode()})  # fmt: skip
    first, second = parse_shard(raw, "s3://b/x.tar")
    assert (first.name, first.key, first.etag, first.label, first.data) == ("s-1", "d/a/1.JPG", "e1", 0, b"IMG")
    assert (second.name, second.label, second.data) == ("s-0", 1, b"P")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\0" * 100 + b"garbage", r"not a readable tar file"),
        (tar_of({"s.jpg": b"I", "s.cls": b"0"}), r"sample s has files \['cls', 'jpg'\]; expected one image"),
        (tar_of({"s.jpg": b"I", "s.png": b"I", "s.cls": b"0", "s.json": b"{}"}), r"expected one image"),
        (tar_of({"s.jpg": b"I", "s.cls": b"zero", "s.json": b"{}"}), r"sample s has an unreadable label or \.json"),
        (tar_of({"s.jpg": b"I", "s.cls": b"0", "s.json": b"{}"}), r"sample s has an unreadable label or \.json"),
    ],
)
def test_a_tar_that_is_not_ours_is_refused_naming_shard_and_sample(raw, message):
    with pytest.raises(ShardError, match=rf"Shard s3://b/x\.tar(:| is) .*{message}"):
        parse_shard(raw, "s3://b/x.tar")


def items(n: int, classes: int = 4) -> list[ImageItem]:
    return [ImageItem(f"d/c{i % classes}/{i:05d}.jpg", f"e{i}", 1, i % classes, "train") for i in range(n)]


def test_packing_order_mixes_classes_and_depends_only_on_keys_and_seed():
    listed = sorted(items(400), key=lambda i: i.key)  # a listing: class after class
    order = packing_order(listed, seed=0)
    assert sorted(order) == sorted(listed)
    assert len({i.label for i in order[:20]}) == 4  # the first shard's worth is not one class
    assert packing_order(list(reversed(listed)), seed=0) == order
    assert packing_order(listed, seed=1) != order
    grown = packing_order(listed + items(420)[400:], seed=0)
    assert [i for i in grown if i in set(listed)] == order  # new images slot in; old ones keep their order


def test_the_shuffle_buffer_permutes_within_its_bound():
    stream = [(n, b"") for n in range(1000)]
    out = [n for n, _ in _shuffled(iter(stream), random.Random(0), 50)]
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert all(n <= position + 50 for position, n in enumerate(out))  # nothing leaves before it has arrived
    again = [n for n, _ in _shuffled(iter(stream), random.Random(0), 50)]
    assert again == out
    assert [n for n, _ in _shuffled(iter(stream[:10]), random.Random(0), 50)] != list(range(10))  # all buffered


def test_ranks_share_shards_and_steps():
    order = [7, 2, 5, 0, 3]
    assert rank_shards(order, 0, 2) == [7, 5, 3] and rank_shards(order, 1, 2) == [2, 0]
    assert group_sizes(10, 4) == [2, 3, 2, 3] and sum(group_sizes(1000, 7)) == 1000
    assert group_sizes(2, 4) == [0, 1, 0, 1]  # fewer images than steps: some steps empty, all taken
    assert group_sizes(0, 3) == [0, 0, 0]
    in_shards = [ImageItem("k", "e", 0, 0, "train", s) for s in (4, 4, 1, 4, 9, 1)]
    assert shards_of(in_shards) == [4, 1, 9]
