"""The sharded form of a dataset against the real S3 server: preparing it, reading it (one GET per shard, shuffled
within a buffer, shared among ranks), retries that change nothing, and shards that are missing, truncated or
disagree with their index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections import Counter

import pytest
import torch

from airflow_tl.data.dataset import list_dataset
from airflow_tl.data.errors import DatasetChangedError, ShardError
from airflow_tl.data.loader import ImageStream
from airflow_tl.data.shard_writer import prepare_shards
from airflow_tl.data.shards import ShardIndex, read_index
from tests.helpers import SMALL_INPUT, keys_under
from tests.integration.test_loader import CountingStore, encode

# Odd folder names as buckets hold them; enough images per class for several small shards per split.
CLASSES = ("Golden Retriever", "café", "x-ray (2019)")
PER_CLASS = 30


@pytest.fixture(scope="module")
def store(local_s3):
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


def fresh_bucket(store) -> str:
    name = f"tl-test-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return name


def upload_classes(store, root: str, per_class: int = PER_CLASS, start: int = 0) -> dict[str, int]:
    """``<class>/<n>.<ext>`` images (PNG, JPEG, WebP; RGB, L, RGBA); returns key -> image number."""
    numbers = {}
    bucket, prefix = root[5:].split("/", 1)
    for c, name in enumerate(CLASSES):
        for i in range(start, start + per_class):
            n = c * 1000 + i
            ext = ("png", "jpg", "webp")[n % 3]
            key = f"{prefix}/{name}/{i:04d}.{ext}"
            store.put_bytes(f"s3://{bucket}/{key}", encode(n, lossless=True))
            numbers[key] = n
    return numbers


@pytest.fixture(scope="module")
def prepared(store):
    """One class-folder dataset and its shards (at most 8 images each), shared by the read-only tests."""
    root = f"s3://{fresh_bucket(store)}/photos"
    upload_classes(store, root)
    result = prepare_shards(store, root, seed=3, shard_images=8)
    return root, result


def one_pass(stream: ImageStream, split: str, **kwargs) -> tuple[list[str], dict[str, torch.Tensor], list[int]]:
    keys, tensors, labels = [], {}, []
    for batch in stream.batches(split, **kwargs):
        keys += batch.keys
        labels += batch.y.tolist()
        tensors.update(zip(batch.keys, batch.x, strict=True))
    return keys, tensors, labels


def test_prepare_writes_the_webdataset_layout_with_the_listing_split(store, prepared):
    root, result = prepared
    listed = list_dataset(store, root, seed=3, for_training=False)
    files = sorted(k.rsplit("/", 1)[-1] for k in keys_under(store, f"{root}/shards"))
    assert "index.json" in files and "manifest.json.gz" in files
    tars = [f for f in files if f.endswith(".tar")]
    assert tars == sorted(f"{e.file}" for e in read_index(store, f"{root}/shards").shards)
    for split, count in listed.counts().items():
        assert result.counts[split] == count
        assert f"{split}-000000.tar" in tars
        assert len([t for t in tars if t.startswith(split)]) == -(-count // 8)

    sharded = list_dataset(store, f"{root}/shards")
    assert sharded.class_names == sorted(CLASSES) == listed.class_names
    assert sharded.fingerprint() == listed.fingerprint()  # the same images, labels and split
    for split in ("train", "val", "test"):
        assert sorted((i.key, i.etag, i.label) for i in sharded.split(split)) == sorted(
            (i.key, i.etag, i.label) for i in listed.split(split)
        )
    # Keys are listed class by class; a shard mixes classes so that a shuffle buffer can.
    first = [i.label for i in sharded.split("train") if i.shard == 0]
    assert len(set(first)) > 1
    # The folder listing of the images themselves ignores their sharded form, silently.
    assert len(list_dataset(store, root, seed=3).items) == len(listed.items)


def test_shards_are_readable_by_the_webdataset_library(store, prepared, tmp_path):
    import webdataset

    root, _ = prepared
    sharded = list_dataset(store, f"{root}/shards")
    local = tmp_path / "train-000000.tar"
    local.write_bytes(store.get_bytes(f"{root}/shards/train-000000.tar"))
    samples = list(webdataset.WebDataset(str(local), shardshuffle=False))
    expected = [i for i in sharded.split("train") if i.shard == 0]
    assert [json.loads(s["json"])["key"] for s in samples] == [i.key for i in expected]
    assert [int(s["cls"]) for s in samples] == [i.label for i in expected]
    assert samples[0]["__key__"] == "train-000000000"


def test_a_pass_reads_each_shard_once_and_yields_the_same_images_as_the_objects(store, prepared):
    root, _ = prepared
    objects = list_dataset(store, root, seed=3)
    counting = CountingStore(store.client)
    sharded = list_dataset(counting, f"{root}/shards")
    counting.gets.clear()
    for split in ("train", "val", "test"):
        keys, tensors, labels = one_pass(ImageStream(counting, sharded, SMALL_INPUT, batch_size=5, threads=4), split)
        assert keys == [i.key for i in sharded.split(split)]  # unshuffled: shard order
        assert labels == [i.label for i in sharded.split(split)]
        _, from_objects, _ = one_pass(ImageStream(store, objects, SMALL_INPUT, batch_size=5, threads=4), split)
        assert from_objects.keys() == tensors.keys()
        for key, tensor in tensors.items():
            assert torch.equal(tensor, from_objects[key]), key
    shards = len(read_index(store, f"{root}/shards").shards)
    assert len(counting.gets) == shards
    assert all(uri.endswith(".tar") for uri in counting.gets)


def test_shuffling_is_seeded_per_epoch_within_a_bounded_buffer(store, prepared):
    root, _ = prepared
    sharded = list_dataset(store, f"{root}/shards")
    stream = ImageStream(store, sharded, SMALL_INPUT, batch_size=7, threads=4, shuffle_buffer=10)

    def order(seed: int, epoch: int) -> list[str]:
        return one_pass(stream, "train", shuffle=True, seed=seed, epoch=epoch)[0]

    plain = [i.key for i in sharded.split("train")]
    first = order(0, 0)
    assert sorted(first) == sorted(plain) and first != plain
    assert order(0, 0) == first
    assert order(0, 1) != first and order(1, 0) != first
    # Bounded: an image leaves the buffer at most `buffer` places early, plus the shard order's shuffle.
    shard_of = {i.key: i.shard for i in sharded.split("train")}
    runs = [shard_of[k] for k in first[:5]]
    assert len(set(runs)) <= 3


def test_ranks_read_disjoint_shards_and_step_together(store, prepared):
    root, _ = prepared
    sharded = list_dataset(store, f"{root}/shards")
    train = sharded.split("train")
    batch = 8
    per_rank = []
    for rank in range(2):
        stream = ImageStream(store, sharded, SMALL_INPUT, batch_size=batch, threads=2)
        batches = list(stream.batches("train", shuffle=True, seed=0, epoch=2, shard=(rank, 2)))
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]) == -(-len(train) // batch)
    keys = [k for batches in per_rank for b in batches for k in b.keys]
    assert sorted(keys) == sorted(i.key for i in train)  # every image once, over both ranks
    shards = [{i.shard for i in train if i.key in {k for b in batches for k in b.keys}} for batches in per_rank]
    assert not shards[0] & shards[1]
    sizes = [len(a.keys) + len(b.keys) for a, b in zip(*per_rank, strict=True)]
    assert max(sizes) - min(sizes) <= 2  # together close to the global batch at every step


def test_a_repeat_is_a_cache_hit_and_growth_keeps_every_image_in_its_split(store):
    root = f"s3://{fresh_bucket(store)}/grow"
    upload_classes(store, root, per_class=12)
    first = prepare_shards(store, root, shard_images=5)
    before = {i.key: i.split for i in list_dataset(store, f"{root}/shards").items}
    tars = {k: store.get_bytes(f"s3://{root[5:].split('/')[0]}/{k}") for k in keys_under(store, f"{root}/shards")}

    again = prepare_shards(store, root, shard_images=5)
    assert again.cache_hit and not first.cache_hit and again.fingerprint == first.fingerprint
    assert {k: store.get_bytes(f"s3://{root[5:].split('/')[0]}/{k}") for k in tars} == tars

    upload_classes(store, root, per_class=20, start=12)
    grown = prepare_shards(store, root, shard_images=5)
    after = {i.key: i.split for i in list_dataset(store, f"{root}/shards").items}
    assert not grown.cache_hit and grown.counts != first.counts
    moved = [k for k, split in before.items() if after[k] != split]
    assert len(moved) <= len(CLASSES) * 2, moved  # only the small-class donors of data/split.py may move

    smaller = prepare_shards(store, root, shard_images=50)  # fewer, larger shards: the old extras go
    index = read_index(store, f"{root}/shards")
    assert smaller.shards == len(index.shards) < grown.shards
    left = [k for k in keys_under(store, f"{root}/shards") if k.endswith(".tar")]
    assert sorted(k.rsplit("/", 1)[-1] for k in left) == sorted(e.file for e in index.shards)


def test_a_failed_preparation_leaves_no_index_and_readers_say_how_to_prepare(store):
    bucket = fresh_bucket(store)
    root = f"s3://{bucket}/data"
    upload_classes(store, root, per_class=6)
    prepare_shards(store, root, shard_images=4)

    class Vanishing(type(store)):
        """The real store, but one image is deleted (on the real server) just before it is read."""

        def get_with_etag(self, uri):
            if uri.endswith("0003.webp"):
                self.delete(uri)
            return super().get_with_etag(uri)

    upload_classes(store, root, per_class=8)  # changed: the index must be rewritten
    with pytest.raises(DatasetChangedError, match=r"0003\.webp no longer exists"):
        prepare_shards(Vanishing(store.client), root, shard_images=4)
    assert not store.exists(f"{root}/shards/index.json")
    with pytest.raises(ShardError, match=r"has no index\.json.*PrepareShardsOperator\(dataset_uri='s3://"):
        list_dataset(store, f"{root}/shards")


@pytest.fixture
def damaged(store):
    """A fresh prepared copy that a test may break."""
    root = f"s3://{fresh_bucket(store)}/damaged"
    upload_classes(store, root, per_class=10)
    prepare_shards(store, root, shard_images=6)
    return f"{root}/shards"


def read_all(store, uri: str) -> None:
    dataset = list_dataset(store, uri, for_training=False)
    for _ in ImageStream(store, dataset, SMALL_INPUT, batch_size=4, threads=2).batches(("train", "val", "test")):
        pass


def test_a_missing_shard_is_named(store, damaged):
    store.delete(f"{damaged}/train-000001.tar")
    with pytest.raises(ShardError, match=r"Shard s3://.*/train-000001\.tar is missing"):
        read_all(store, damaged)


def test_a_truncated_shard_is_named_before_any_of_its_images_is_used(store, damaged):
    uri = f"{damaged}/val-000000.tar"
    raw = store.get_bytes(uri)
    store.put_bytes(uri, raw[: len(raw) // 2])
    with pytest.raises(ShardError, match=rf"Shard {uri} is truncated: {len(raw) // 2} of the {len(raw)} bytes"):
        read_all(store, damaged)


def test_a_shard_that_differs_from_its_index_is_refused(store, damaged):
    first, second = f"{damaged}/train-000000.tar", f"{damaged}/train-000001.tar"
    store.put_bytes(first, store.get_bytes(second))  # another valid tar in its place
    with pytest.raises(ShardError, match=r"train-000000\.tar disagrees with its index"):
        read_all(store, damaged)


def test_an_index_whose_counts_disagree_with_the_shards_is_refused(store, damaged):
    # An index edited by hand: the same shard files and hashes, one image moved from one shard's count to another's.
    index = read_index(store, damaged)
    train = index.of("train")
    shards = list(index.shards)
    a, b = shards[train[0]], shards[train[1]]
    shards[train[0]] = type(a)(a.file, a.split, a.count - 1, a.bytes, a.sha256)
    shards[train[1]] = type(b)(b.file, b.split, b.count + 1, b.bytes, b.sha256)
    edited = ShardIndex(**{**index.__dict__, "shards": shards})
    store.put_bytes(f"{damaged}/index.json", edited.to_bytes())
    with pytest.raises(ShardError, match=r"train-000000\.tar holds \d+ samples, but its index records"):
        read_all(store, damaged)


def test_a_tar_in_another_layout_is_refused_by_name(store, damaged):
    # A tar made by another tool, put in place with a matching index entry: samples without .cls and .json.
    uri = f"{damaged}/test-000000.tar"
    index = read_index(store, damaged)
    entry = index.shards[index.of("test")[0]]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(entry.count):
            info = tarfile.TarInfo(f"photo{i}.jpg")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    raw = buffer.getvalue()
    shards = [
        type(e)(e.file, e.split, e.count, len(raw), hashlib.sha256(raw).hexdigest()) if e == entry else e
        for e in index.shards
    ]
    store.put_bytes(uri, raw)
    store.put_bytes(f"{damaged}/index.json", ShardIndex(**{**index.__dict__, "shards": shards}).to_bytes())
    with pytest.raises(ShardError, match=rf"Shard {uri}: sample photo0 has files \['jpg'\]; expected one image"):
        read_all(store, damaged)


def test_a_class_folder_named_shards_is_refused(store):
    root = f"s3://{fresh_bucket(store)}/clash"
    store.put_bytes(f"{root}/shards/a.png", encode(1, lossless=True))
    store.put_bytes(f"{root}/cats/a.png", encode(2, lossless=True))
    store.put_bytes(f"{root}/cats/b.png", encode(3, lossless=True))
    with pytest.raises(Exception, match=r"class folder named 'shards'"):
        prepare_shards(store, root)


def test_counts_in_the_index_match_its_shards(store, prepared):
    root, _ = prepared
    index = read_index(store, f"{root}/shards")
    for position, entry in enumerate(index.shards):
        raw = store.get_bytes(index.shard_uri(position))
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names = Counter(m.name.split(".")[0] for m in tar)
        assert len(names) == entry.count and set(names.values()) == {3}
        assert hashlib.sha256(raw).hexdigest() == entry.sha256 and len(raw) == entry.bytes


# --- through DAG runs -----------------------------------------------------------------------------------------


def test_prepare_then_train_evaluate_and_promote_from_the_shards(store, bucket, demo, small_target, run_dag):
    from airflow_tl.data.manifest import read_manifest
    from airflow_tl.registry.store import Registry
    from tests.helpers import copy_dataset

    data = f"s3://{bucket}/digits"
    copy_dataset(store, small_target, data)
    prepared = run_dag("tl_prepare_shards", {"dataset_uri": data, "shard_images": 16, "threads": 4})
    assert prepared.state == "success", prepared.failures
    summary = prepared.xcoms["prepare_shards"]
    assert summary["shards_uri"] == f"{data}/shards" and summary["cache_hit"] is False
    assert summary["counts"] == list_dataset(store, data).counts()
    again = run_dag("tl_prepare_shards", {"dataset_uri": data, "shard_images": 16, "threads": 4})
    assert again.xcoms["prepare_shards"]["cache_hit"] is True

    conf = {
        "pretrained_uri": demo.source_model, "dataset_uri": f"{data}/shards", "registry_uri": f"s3://{bucket}/registry",
        "work_uri": f"s3://{bucket}/work", "model_name": "digits", "epochs": 1,
    }  # fmt: skip
    result = run_dag("tl_full_finetune", conf)
    assert result.state == "success", result.failures
    evaluated = result.xcoms["evaluate"]
    assert evaluated["promoted"] and evaluated["metrics"]["n"] == summary["counts"]["test"]
    registry = Registry(store, f"s3://{bucket}/registry", "digits")
    manifest = read_manifest(store, registry.version_uri(evaluated["version"]))
    objects = list_dataset(store, data)
    assert manifest.fingerprint == objects.fingerprint()  # the images, labels and split of the listing
    assert manifest.keys("test") == {i.key for i in objects.split("test")}
