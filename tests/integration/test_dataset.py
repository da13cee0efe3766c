"""Listing image datasets in S3: layouts, classes, the stable hash split, errors that name the dataset."""

from __future__ import annotations

import io
import logging
import re

import pytest
from PIL import Image

from airflow_tl.data.dataset import DatasetError, ImageDataset, class_mapping, list_dataset

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MODES = ("L", "RGB", "RGBA")


@pytest.fixture(scope="module")
def store(local_s3):
    """The conftest ``store``, built the same production way, once per module: building a client costs ~0.5 s."""
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


def image_bytes(ext: str = ".png", mode: str = "RGB", size: tuple[int, int] = (6, 5), value: int = 128) -> bytes:
    fmt = FORMATS[ext.lower()]
    if fmt == "JPEG" and mode == "RGBA":
        mode = "RGB"  # JPEG has no alpha channel
    colour = value if mode == "L" else (value, 255 - value, value // 2, 200)[: len(mode)]
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def put_images(store, root: str, rels: list[str]) -> None:
    """Upload a tiny image for every relative key, cycling through formats and colour modes."""
    for n, rel in enumerate(rels):
        ext = "." + rel.rsplit(".", 1)[-1]
        store.put_bytes(f"{root}/{rel}", image_bytes(ext, MODES[n % len(MODES)], value=n % 256))


def flat(classes: dict[str, int], ext_cycle: tuple[str, ...] = (".png", ".jpg", ".webp")) -> list[str]:
    return [f"{name}/img{i:03d}{ext_cycle[i % len(ext_cycle)]}" for name, n in classes.items() for i in range(n)]


def split_layout(counts: dict[str, dict[str, int]]) -> list[str]:
    """``{"train": {"cat": 3}, ...}`` -> keys ``train/cat/000.png`` ..."""
    return [f"{split}/{name}/{i:03d}.png" for split, per in counts.items() for name, n in per.items() for i in range(n)]


def assignment(dataset: ImageDataset) -> dict[str, str]:
    return {item.key: item.split for item in dataset.items}


def raises_naming(uri: str, *fragments: str):
    pattern = re.escape(f"Dataset {uri} ") + ".*" + ".*".join(re.escape(f) for f in fragments)
    return pytest.raises(DatasetError, match=pattern)


# --- layouts ----------------------------------------------------------------------------------------------------


def test_split_layout(store, bucket):
    root = f"s3://{bucket}/data/pets"
    rels = split_layout({"train": {"dog": 3, "cat": 4}, "val": {"cat": 1, "dog": 2}, "test": {"dog": 1, "cat": 1}})
    put_images(store, root, rels)

    dataset = list_dataset(store, root)

    assert dataset.layout == "splits"
    assert dataset.uri == root and dataset.bucket == bucket
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.counts() == {"train": 7, "val": 3, "test": 2}
    assert [i.key for i in dataset.items] == sorted(f"data/pets/{r}" for r in rels)
    for item in dataset.items:
        split, label = item.key.split("/")[2:4]
        assert item.split == split
        assert dataset.class_names[item.label] == label
        assert item.size > 0 and item.etag


def test_flat_layout_split_is_stratified_seeded_and_roughly_70_15_15(store, bucket):
    root = f"s3://{bucket}/flat"
    sizes = {"zebra": 20, "ant": 40, "moth": 10}
    put_images(store, root, flat(sizes))

    dataset = list_dataset(store, root, seed=7)

    assert dataset.layout == "classes"
    assert dataset.class_names == ["ant", "moth", "zebra"]
    assert len(dataset.items) == sum(sizes.values())
    for index, name in enumerate(dataset.class_names):
        mine = [i for i in dataset.items if i.label == index]
        assert all(i.key.split("/")[1] == name for i in mine)
        per_split = {s: sum(1 for i in mine if i.split == s) for s in ("train", "val", "test")}
        total = sizes[name]
        assert sum(per_split.values()) == total
        assert all(per_split.values()), (name, per_split)  # stratified: every class in every split
        assert abs(per_split["train"] / total - 0.7) <= 0.1, (name, per_split)
        assert abs(per_split["val"] / total - 0.15) <= 0.1, (name, per_split)
        assert abs(per_split["test"] / total - 0.15) <= 0.1, (name, per_split)


def test_flat_split_is_deterministic_per_seed(store, bucket):
    root = f"s3://{bucket}/flat"
    put_images(store, root, flat({"a": 20, "b": 20}))

    first = list_dataset(store, root, seed=1)
    again = list_dataset(store, root, seed=1)
    other = list_dataset(store, root, seed=2)

    assert assignment(first) == assignment(again)
    assert first.fingerprint() == again.fingerprint()
    assert assignment(first) != assignment(other)
    assert first.fingerprint() != other.fingerprint()
    for split, n in first.counts().items():  # a different hash, about the same proportions
        assert abs(n - other.counts()[split]) <= 4, (first.counts(), other.counts())


def test_growing_a_flat_dataset_moves_no_image_to_another_split(store, bucket):
    """The issue's measurement: 2 x 100 images, 20 more per class, then a new class. On the shuffled split
    13 of 36 test images had been training images before; now none may move."""
    root = f"s3://{bucket}/growing"
    put_images(store, root, flat({"a": 100, "b": 100}, (".png",)))
    before = assignment(list_dataset(store, root))
    put_images(store, root, [f"{c}/new{i:03d}.png" for c in ("a", "b") for i in range(20)])
    grown = assignment(list_dataset(store, root))
    put_images(store, root, [f"c/img{i:03d}.png" for i in range(30)])
    with_class = assignment(list_dataset(store, root))

    assert sum(split == "test" for split in before.values()) >= 10  # a real test split, not an empty one
    for after in (grown, with_class):
        assert {k: after[k] for k in before} == before
    assert len(with_class) == 270


def test_images_in_split_folders_keep_their_folders_split(store, bucket):
    root = f"s3://{bucket}/kept"
    rels = split_layout({"train": {"a": 5, "b": 5}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    put_images(store, root, rels)
    for seed in (0, 1, 2):
        assert assignment(list_dataset(store, root, seed=seed)) == {f"kept/{rel}": rel.split("/")[0] for rel in rels}


def test_odd_folder_names_are_class_names_as_they_are(store, bucket):
    root = f"s3://{bucket}/odd names/v2 (final)"
    names = ["Golden Retriever", "chat noir", "ñandú", "50%-off", "a+b#c"]
    put_images(store, root, [f"{name}/{i}.png" for name in names for i in range(3)])
    dataset = list_dataset(store, root)
    assert dataset.class_names == sorted(names)
    assert dataset.layout == "classes" and len(dataset.items) == 15


# --- layout ------------------------------------------------------------------------------------------------------


def test_a_stray_class_folder_beside_split_folders_is_refused(store, bucket):
    root = f"s3://{bucket}/mixed-layout"
    put_images(store, root, [*split_layout({"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}}), "c/1.png"])
    with raises_naming(root, "mixes split folders (train/, val/)", "c/", "layout='classes'"):
        list_dataset(store, root)


@pytest.mark.parametrize("folders", [("Train", "Test"), ("train", "validation", "test"), ("train", "valid")])
def test_split_folders_with_unexpected_names_are_refused(store, bucket, folders):
    root = f"s3://{bucket}/named-{'-'.join(folders).lower()}"
    put_images(store, root, [f"{folder}/{cls}/{i}.png" for folder in folders for cls in "ab" for i in range(3)])
    odd = [f for f in folders if f not in ("train", "val", "test")]
    with raises_naming(root, "named like splits", *[f"{f}/" for f in odd]):
        list_dataset(store, root)


def test_layout_classes_takes_split_named_folders_as_classes(store, bucket):
    root = f"s3://{bucket}/dev-prod"
    put_images(store, root, flat({"dev": 4, "prod": 4}))
    with raises_naming(root, "named like splits", "dev/"):
        list_dataset(store, root)
    dataset = list_dataset(store, root, layout="classes")
    assert dataset.class_names == ["dev", "prod"] and dataset.layout == "classes"


def test_layout_splits_refuses_a_class_folder_layout(store, bucket):
    root = f"s3://{bucket}/not-splits"
    put_images(store, root, flat({"a": 3, "b": 3}))
    with raises_naming(root, "outside <split>/<class>/ folders"):
        list_dataset(store, root, layout="splits")


def test_every_class_with_three_images_is_in_every_split(store, bucket):
    root = f"s3://{bucket}/tiny"
    put_images(store, root, flat({"a": 3, "b": 3, "c": 4}))

    for seed in range(5):
        dataset = list_dataset(store, root, seed=seed)
        for index in range(3):
            assert {i.split for i in dataset.items if i.label == index} == {"train", "val", "test"}


def test_classes_sorted_and_non_images_reported_once(store, bucket, caplog):
    root = f"s3://{bucket}/mixed"
    put_images(store, root, ["Zeta/1.png", "Zeta/2.JPG", "Zeta/3.webp", "alpha/1.jpeg", "alpha/2.png", "alpha/3.PNG"])
    put_images(store, root, ["beta/1.png", "beta/2.png", "beta/3.png"])
    for rel in ["README.md", "labels.csv", "alpha/notes.txt", "beta/.DS_Store", "beta/thumbs.db"]:
        store.put_bytes(f"{root}/{rel}", b"not an image")
    store.put_bytes(f"s3://{bucket}/mixed-other/gamma/1.png", image_bytes())  # a sibling prefix, not under root

    with caplog.at_level(logging.WARNING, logger="airflow_tl.data.dataset"):
        dataset = list_dataset(store, root)

    assert dataset.class_names == ["Zeta", "alpha", "beta"]  # sorted as strings
    assert len(dataset.items) == 9
    assert all(i.key.lower().endswith((".png", ".jpg", ".jpeg", ".webp")) for i in dataset.items)
    (report,) = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]  # once, not per file
    assert "Ignored 5 objects" in report and root in report
    assert ".md: 1" in report and ".csv: 1" in report and ".txt: 1" in report and "hidden files: 1" in report


def test_folder_markers_of_non_empty_classes_are_fine(store, bucket):
    root = f"s3://{bucket}/markers"
    put_images(store, root, flat({"a": 3, "b": 3}))
    for marker in ["a/", "b/"]:
        store.put_bytes(f"{root}/{marker}", b"")
    store.put_bytes(f"s3://{bucket}/markers/", b"")  # the dataset folder's own marker

    assert list_dataset(store, root).class_names == ["a", "b"]


# --- errors -----------------------------------------------------------------------------------------------------


def test_no_images(store, bucket):
    root = f"s3://{bucket}/empty"
    store.put_bytes(f"{root}/cat/readme.txt", b"hello")
    with raises_naming(root, "no images"):
        list_dataset(store, root)


def test_no_objects_at_all(store, bucket):
    root = f"s3://{bucket}/nothing-here"
    with raises_naming(root, "no images"):
        list_dataset(store, root)


def test_single_class(store, bucket):
    root = f"s3://{bucket}/one"
    put_images(store, root, flat({"only": 6}))
    with raises_naming(root, "single class", "only"):
        list_dataset(store, root)


def test_single_class_in_split_layout(store, bucket):
    root = f"s3://{bucket}/one-split"
    put_images(store, root, split_layout({"train": {"only": 3}, "val": {"only": 1}}))
    with raises_naming(root, "single class", "only"):
        list_dataset(store, root)


def test_empty_class_folder(store, bucket):
    root = f"s3://{bucket}/hole"
    put_images(store, root, flat({"a": 3, "b": 3}))
    store.put_bytes(f"{root}/ghost/", b"")
    with raises_naming(root, "empty class folders", "ghost"):
        list_dataset(store, root)


def test_empty_class_folder_in_split_layout(store, bucket):
    root = f"s3://{bucket}/hole-split"
    put_images(store, root, split_layout({"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}))
    store.put_bytes(f"{root}/train/ghost/", b"")
    with raises_naming(root, "empty class folders", "ghost"):
        list_dataset(store, root)


def test_images_outside_class_folders(store, bucket):
    root = f"s3://{bucket}/loose"
    put_images(store, root, [*flat({"a": 3, "b": 3}), "stray.png"])
    with raises_naming(root, "outside class folders", "stray.png"):
        list_dataset(store, root)


def test_image_directly_under_a_split_folder_is_outside_class_folders(store, bucket):
    """A split layout with one image straight under ``train/`` must not turn train/val/test into classes."""
    root = f"s3://{bucket}/loose-split"
    put_images(store, root, [*split_layout({"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}}), "train/stray.png"])
    with raises_naming(root, "stray.png"):
        list_dataset(store, root)


def test_class_without_training_images(store, bucket):
    root = f"s3://{bucket}/no-train"
    put_images(store, root, split_layout({"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1, "c": 1}}))
    with raises_naming(root, "no training images", "c"):
        list_dataset(store, root)


def test_no_validation_images_in_split_layout(store, bucket):
    root = f"s3://{bucket}/no-val"
    put_images(store, root, split_layout({"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}))
    with raises_naming(root, "no validation images"):
        list_dataset(store, root)


def test_no_validation_images_when_classes_are_too_small_to_split(store, bucket):
    root = f"s3://{bucket}/too-small"
    put_images(store, root, flat({"a": 2, "b": 2}))  # fewer than 3 per class: everything goes to train
    with raises_naming(root, "no validation images"):
        list_dataset(store, root)


# --- fingerprint and class mapping -----------------------------------------------------------------------------


def test_fingerprint_follows_content_and_keys(store, bucket):
    root = f"s3://{bucket}/fp"
    rels = split_layout({"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    put_images(store, root, rels)
    base = list_dataset(store, root).fingerprint()

    assert list_dataset(store, root).fingerprint() == base  # listing again changes nothing
    store.put_bytes(f"{root}/{rels[0]}", store.get_bytes(f"{root}/{rels[0]}"))
    assert list_dataset(store, root).fingerprint() == base  # same bytes, same ETag

    store.put_bytes(f"{root}/{rels[0]}", image_bytes(".png", "RGB", value=250))
    changed = list_dataset(store, root).fingerprint()
    assert changed != base

    store.put_bytes(f"{root}/val/a/extra.png", image_bytes())
    added = list_dataset(store, root).fingerprint()
    assert added not in (base, changed)

    store.put_bytes(f"{root}/val/a/notes.txt", b"ignored")
    assert list_dataset(store, root).fingerprint() == added  # non-images are not part of the dataset


def test_class_mapping(store, bucket):
    root = f"s3://{bucket}/map"
    put_images(store, root, flat({"cat": 3, "dog": 3}))
    dataset = list_dataset(store, root)
    model_uri = f"s3://{bucket}/models/m1"

    assert class_mapping(dataset, ["cat", "dog"], new_head=False, model_uri=model_uri) == ["cat", "dog"]
    assert class_mapping(dataset, ["x", "y", "z"], new_head=True, model_uri=model_uri) == ["cat", "dog"]
    with pytest.raises(DatasetError) as err:
        class_mapping(dataset, ["dog", "cat"], new_head=False, model_uri=model_uri)
    message = str(err.value)
    assert f"Dataset {root}" in message and model_uri in message
    assert "['cat', 'dog']" in message and "['dog', 'cat']" in message
