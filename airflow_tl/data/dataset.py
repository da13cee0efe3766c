"""Image datasets in S3: one listing, the layout and classes it implies, and a stable split.

Layouts (DESIGN.md, data/layout.py): ``<prefix>/{train,val,test}/<class>/<image>``, or ``<prefix>/<class>/<image>``
whose images are split by a hash of their keys (data/split.py), so every run and every task sees the same
split and adding images never moves old ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from airflow_tl.data.decode import IMAGE_EXTENSIONS
from airflow_tl.data.errors import DatasetChangedError, DatasetError
from airflow_tl.data.layout import SPLITS, LayoutError, place
from airflow_tl.data.manifest import DataManifest, describe_change
from airflow_tl.data.shards import SHARDS_FOLDER, ShardIndex, is_shards_uri, read_index, read_manifest
from airflow_tl.data.split import DEFAULT_FRACTIONS, assign_splits
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

# Folders listed at once: a prefix's pages come one after another, different prefixes in parallel.
LIST_THREADS = 8

__all__ = [
    "SPLITS",
    "DatasetChangedError",
    "DatasetError",
    "ImageDataset",
    "ImageItem",
    "check_unchanged",
    "class_mapping",
    "list_dataset",
    "open_sharded",
]


class ImageItem(NamedTuple):
    """One image of a listed dataset. A tuple: datasets hold millions, and ranks receive them pickled."""

    key: str
    etag: str
    size: int
    label: int
    split: str
    shard: int = -1  # in a sharded dataset, the position of its shard in the index


@dataclass
class ImageDataset:
    """A listed dataset: where it is, its classes in index order, and every image with its split."""

    uri: str
    bucket: str
    class_names: list[str]
    items: list[ImageItem]
    layout: str  # "splits" or "classes"
    shards: ShardIndex | None = None  # the sharded form (data/shards.py): images are read from these tars
    # Computed once: a listing is not changed after it is made (``only`` makes a new dataset).
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def split(self, name: str) -> list[ImageItem]:
        return [i for i in self.items if i.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for i in self.items if i.split == s) for s in SPLITS}

    def fingerprint(self) -> str:
        """Changes whenever any image (key or content ETag), split or class mapping changes."""
        if self._fingerprint is None:
            payload = [self.uri, self.class_names, [(i.key, i.etag, i.split, i.label) for i in self.items]]
            self._fingerprint = hashlib.sha256(json.dumps(payload).encode()).hexdigest()
        return self._fingerprint

    def manifest(self) -> DataManifest:
        """Which images (key, ETag) are in which split: what a model trained on this listing saw."""
        splits = {name: [(i.key, i.etag) for i in self.items if i.split == name] for name in SPLITS}
        return DataManifest(self.uri, self.fingerprint(), list(self.class_names), splits)

    def only(self, keys: set[str]) -> ImageDataset:
        """The same dataset restricted to ``keys`` (classes and their indices unchanged)."""
        return replace(self, items=[i for i in self.items if i.key in keys])


def list_dataset(
    store: S3Store,
    uri: str,
    *,
    seed: int = 0,
    layout: str = "auto",
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    for_training: bool = True,
) -> ImageDataset:
    """List a dataset once and work out its layout, classes and split.

    ``layout`` is ``"auto"``, ``"splits"`` or ``"classes"`` (data/layout.py). ``for_training`` requires
    training and validation images for every class; evaluation needs only a test split.

    A URI ending in ``/shards`` is the sharded form (data/shards.py): its index and manifest are read instead
    of a listing, and its split is the one fixed when the shards were prepared.
    """
    root = parse_s3_uri(uri, what="Dataset URI")
    if is_shards_uri(uri):
        dataset = open_sharded(store, uri, seed=seed, layout=layout)
        if for_training:
            _check_training_split(dataset)
        return dataset
    objects = store.list(root, threads=LIST_THREADS)
    prefix = root.folder_key
    images, markers, ignored = [], set(), []
    for obj in objects:
        rel = obj.key[len(prefix) :]
        name = rel.rsplit("/", 1)[-1]
        if rel.endswith("/"):
            markers.add(rel.rstrip("/"))  # folder markers written by consoles and sync tools
        elif name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
            images.append((rel, obj))
        elif not rel.startswith(f"{SHARDS_FOLDER}/"):  # the sharded form of these images, not stray files
            ignored.append(rel)
    if not images:
        raise DatasetError(
            f"Dataset {uri} holds no images ({', '.join(IMAGE_EXTENSIONS)}, any case); found {len(objects)} objects."
        )
    report_ignored(uri, ignored)
    try:
        layout, placed = place([rel for rel, _ in images], layout)
    except LayoutError as err:
        raise DatasetError(f"Dataset {uri} {err}") from None
    class_names = sorted({p.class_name for p in placed})
    _check_classes(uri, class_names, markers, layout == "splits")
    index = {name: i for i, name in enumerate(class_names)}
    splits = _splits(placed, seed, fractions)
    items = [
        ImageItem(obj.key, obj.etag, obj.size, index[p.class_name], splits[p.rel])
        for p, (_, obj) in zip(placed, images, strict=True)
    ]
    dataset = ImageDataset(uri.rstrip("/"), root.bucket, class_names, sorted(items, key=lambda i: i.key), layout)
    if for_training:
        _check_training_split(dataset)
    log.info(
        "Dataset %s: %d classes, %s (%s)",
        uri,
        len(class_names),
        ", ".join(f"{n} {s}" for s, n in dataset.counts().items()),
        "train/val/test folders" if layout == "splits" else f"class folders split by key hash with seed {seed}",
    )
    return dataset


def open_sharded(store: S3Store, uri: str, *, seed: int = 0, layout: str = "auto") -> ImageDataset:
    """The sharded form of a dataset, from its index and manifest: items in shard order, each knowing its shard."""
    index = read_index(store, uri)
    manifest = read_manifest(store, index)
    prefix = parse_s3_uri(index.source_uri, what="Source dataset URI").folder_key
    label = {name: i for i, name in enumerate(index.class_names)}
    items = []
    for split in SPLITS:
        pairs = manifest.splits[split]
        shard_of = [position for position in index.of(split) for _ in range(index.shards[position].count)]
        _, placed = place([key[len(prefix) :] for key, _ in pairs], index.layout)
        items += [
            ImageItem(key, etag, 0, label[p.class_name], split, shard)  # size: not recorded, not needed
            for (key, etag), p, shard in zip(pairs, placed, shard_of, strict=True)
        ]
    dataset = ImageDataset(index.uri, parse_s3_uri(index.uri).bucket, index.class_names, items, index.layout, index)
    dataset._fingerprint = index.fingerprint  # the listing the shards were made from: the same images, split
    if layout not in ("auto", index.layout) or seed != index.seed:
        log.info("The split of %s was fixed when it was prepared (layout %s, seed %d)", uri, index.layout, index.seed)
    log.info(
        "Sharded dataset %s (from %s, prepared %s): %d classes, %s in %d shards",
        index.uri, index.source_uri, index.created_at or "at an unknown time", len(index.class_names),
        ", ".join(f"{n} {s}" for s, n in dataset.counts().items()), len(index.shards),
    )  # fmt: skip
    return dataset


def _splits(placed, seed: int, fractions) -> dict[str, str]:
    fixed = {p.rel: p.split for p in placed if p.split is not None}
    by_class: dict[str, list[str]] = {}
    for p in placed:
        if p.split is None:
            by_class.setdefault(p.class_name, []).append(p.rel)
    return fixed | assign_splits(sorted(by_class.items()), seed=seed, fractions=fractions)


def report_ignored(uri: str, ignored: list[str]) -> None:
    """One log line for everything that is not an image, by extension, so stray files are seen but not fatal."""
    if not ignored:
        return
    kinds = Counter(_extension(rel) for rel in ignored)
    log.warning(
        "Ignored %d objects under %s that are not images (%s), e.g. %s",
        len(ignored),
        uri,
        ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common()),
        ", ".join(ignored[:3]),
    )


def _extension(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):
        return "hidden files"
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else "no extension"


def _check_classes(uri: str, class_names: list[str], markers: set[str], split_layout: bool) -> None:
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


def check_unchanged(dataset: ImageDataset, earlier: DataManifest, *, since: str) -> None:
    """Fail, saying what changed, when ``dataset`` is not the listing ``earlier`` recorded (``since``: by whom)."""
    if dataset.fingerprint() == earlier.fingerprint:
        return
    now = dataset.manifest()
    change = describe_change(earlier, now)
    same_images = {pair for pairs in earlier.splits.values() for pair in pairs} == {
        pair for pairs in now.splits.values() for pair in pairs
    }
    if same_images and earlier.class_names == now.class_names:
        raise DatasetError(
            f"Dataset {dataset.uri} is split differently than when {since} listed it ({change}): give both tasks "
            "the same seed and layout."
        )
    raise DatasetChangedError(
        f"Dataset {dataset.uri} changed since {since} listed it: {change}. The model was trained on the earlier "
        "listing, so evaluating it on this one would mix two datasets. Run the DAG again once the data is stable."
    )


def class_mapping(dataset: ImageDataset, model_classes: list[str], *, new_head: bool, model_uri: str) -> list[str]:
    """The class names a model trained on ``dataset`` will have; an error when they contradict its head."""
    if new_head or dataset.class_names == model_classes:
        return dataset.class_names
    raise DatasetError(
        f"Dataset {dataset.uri} has classes {dataset.class_names} but model {model_uri} predicts {model_classes}. "
        "Train a new head (reset_head='auto' or True) or use a dataset with the model's classes."
    )
