"""Image datasets in S3: one listing, the layout and classes it implies, and a deterministic split.

Layouts (DESIGN.md): ``<prefix>/{train,val,test}/<class>/<image>``, or ``<prefix>/<class>/<image>``
which is split here, stratified and seeded, so every run and every task sees the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass

from airflow_tl.data.decode import IMAGE_EXTENSIONS
from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


class DatasetError(PermanentError, ValueError):
    """A dataset whose layout, classes or images cannot be used: fixing the data, not retrying, helps."""


@dataclass(frozen=True)
class ImageItem:
    key: str
    etag: str
    size: int
    label: int
    split: str


@dataclass
class ImageDataset:
    """A listed dataset: where it is, its classes in index order, and every image with its split."""

    uri: str
    bucket: str
    class_names: list[str]
    items: list[ImageItem]
    layout: str  # "splits" or "classes"

    def split(self, name: str) -> list[ImageItem]:
        return [i for i in self.items if i.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for i in self.items if i.split == s) for s in SPLITS}

    def fingerprint(self) -> str:
        """Changes whenever any image (key or content ETag), split or class mapping changes."""
        payload = [self.uri, self.class_names, [(i.key, i.etag, i.split, i.label) for i in self.items]]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def list_dataset(
    store: S3Store,
    uri: str,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    for_training: bool = True,
) -> ImageDataset:
    """List a dataset once and work out its layout, classes and split.

    ``for_training`` requires training and validation images for every class; evaluation needs only a test split.
    """
    root = parse_s3_uri(uri, what="Dataset URI")
    objects = store.list(root)
    prefix = root.folder_key
    images, markers, ignored = [], set(), 0
    for obj in objects:
        rel = obj.key[len(prefix) :]
        if rel.endswith("/"):
            markers.add(rel.rstrip("/"))  # folder markers written by consoles and sync tools
        elif rel.lower().endswith(IMAGE_EXTENSIONS):
            images.append((rel.split("/"), obj))
        else:
            ignored += 1
    if not images:
        raise DatasetError(
            f"Dataset {uri} holds no images ({', '.join(IMAGE_EXTENSIONS)}); found {len(objects)} objects."
        )
    if ignored:
        log.info("Ignored %d objects under %s that are not images", ignored, uri)

    split_layout = all(len(parts) >= 2 and parts[0] in SPLITS for parts, _ in images)
    class_of = (lambda parts: parts[1]) if split_layout else (lambda parts: parts[0])
    depth = 3 if split_layout else 2
    loose = next(("/".join(parts) for parts, _ in images if len(parts) < depth), None)
    if loose is not None:
        expected = "<split>/<class>/<image>" if split_layout else "<class>/<image>"
        raise DatasetError(f"Dataset {uri} has images outside class folders (e.g. {loose}); expected {expected}.")
    class_names = sorted({class_of(parts) for parts, _ in images})
    _check_classes(uri, class_names, markers, split_layout)
    index = {name: i for i, name in enumerate(class_names)}

    if split_layout:
        items = [ImageItem(o.key, o.etag, o.size, index[parts[1]], parts[0]) for parts, o in images]
    else:
        items = _stratified_split([(o, index[parts[0]]) for parts, o in images], seed, fractions)
    dataset = ImageDataset(
        uri.rstrip("/"),
        root.bucket,
        class_names,
        sorted(items, key=lambda i: i.key),
        "splits" if split_layout else "classes",
    )
    if for_training:
        _check_training_split(dataset)
    log.info(
        "Dataset %s: %d classes, %s (%s layout)",
        uri,
        len(class_names),
        ", ".join(f"{n} {s}" for s, n in dataset.counts().items()),
        "train/val/test" if split_layout else f"split here, seed {seed}",
    )
    return dataset


def _check_classes(uri, class_names, markers, split_layout) -> None:
    marker_classes = {m.split("/")[-1] for m in markers if m.count("/") == (1 if split_layout else 0)}
    empty = sorted(marker_classes - set(class_names))
    if empty:
        raise DatasetError(f"Dataset {uri} has empty class folders: {', '.join(empty)}. Remove them or add images.")
    if len(class_names) < 2:
        raise DatasetError(
            f"Dataset {uri} has a single class ({class_names[0]!r}); classification needs at least two class folders."
        )


def _check_training_split(dataset: ImageDataset) -> None:
    train = Counter(i.label for i in dataset.split("train"))
    missing = [name for index, name in enumerate(dataset.class_names) if not train[index]]
    if missing:
        raise DatasetError(f"Dataset {dataset.uri} has no training images for classes: {', '.join(missing)}.")
    if not dataset.split("val"):
        raise DatasetError(
            f"Dataset {dataset.uri} has no validation images; add a val/ split or more images per class."
        )


def _stratified_split(labelled, seed: int, fractions: tuple[float, float, float]) -> list[ImageItem]:
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise InvalidArgumentError(
            f"Argument split_fractions must be three non-negative numbers summing to 1. Provided value: {fractions!r}."
        )
    by_class: dict[int, list] = {}
    for obj, label in sorted(labelled, key=lambda pair: pair[0].key):
        by_class.setdefault(label, []).append(obj)
    items = []
    for label, objs in sorted(by_class.items()):
        random.Random(f"{seed}:{label}").shuffle(objs)  # per-class streams: adding a class moves no other class
        n_val = round(len(objs) * fractions[1]) if len(objs) >= 3 else 0
        n_test = round(len(objs) * fractions[2]) if len(objs) >= 3 else 0
        n_val, n_test = max(n_val, 1 if len(objs) >= 3 else 0), max(n_test, 1 if len(objs) >= 3 else 0)
        splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(objs) - n_val - n_test)
        items += [ImageItem(o.key, o.etag, o.size, label, s) for o, s in zip(objs, splits, strict=True)]
    return items


def class_mapping(dataset: ImageDataset, model_classes: list[str], *, new_head: bool, model_uri: str) -> list[str]:
    """The class names a model trained on ``dataset`` will have; an error when they contradict its head."""
    if new_head or dataset.class_names == model_classes:
        return dataset.class_names
    raise DatasetError(
        f"Dataset {dataset.uri} has classes {dataset.class_names} but model {model_uri} predicts {model_classes}. "
        "Train a new head (reset_head='auto' or True) or use a dataset with the model's classes."
    )
