"""Prepare the sharded form of a class-folder dataset: ``<prefix>/shards/`` (data/shards.py).

The images are listed and split as every task lists and splits them (data/dataset.py), so the shards hold the
same stable split and manifest. Within a split they are packed in a seeded hash order of their keys: listings
are sorted by key, that is by class, and a shuffle buffer cannot mix classes that sit thousands of images apart.

Nothing is lost on failure or retry: the old index goes first (readers then see "not prepared", never an old
index over new shards), shards and manifest follow, ``index.json`` is written last, and only then are shards
of an earlier, larger preparation removed. The same listing and settings give the same bytes, so a retry
rewrites identical shards, and an index that already vouches for this listing is kept as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from airflow_tl.data.ahead import submitted_ahead
from airflow_tl.data.dataset import SPLITS, ImageDataset, ImageItem, list_dataset
from airflow_tl.data.errors import DatasetChangedError, DatasetError
from airflow_tl.data.manifest import DataManifest
from airflow_tl.data.shards import (
    INDEX_FILE,
    MANIFEST_FILE,
    SHARDS_FOLDER,
    ShardEntry,
    ShardError,
    ShardIndex,
    read_index,
    sample_name,
)
from airflow_tl.data.split import DEFAULT_FRACTIONS
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

# WebDataset's advice is shards of 100 MB to a few GB; readers hold a few shards in memory at a time.
DEFAULT_SHARD_MB = 128
DEFAULT_SHARD_IMAGES = 10_000


@dataclass
class ShardsResult:
    uri: str
    cache_hit: bool
    counts: dict[str, int]
    shards: int
    bytes: int
    fingerprint: str
    images_per_s: float | None = None

    def summary(self) -> dict:
        return asdict(self)


def packing_order(items: Sequence[ImageItem], seed: int) -> list[ImageItem]:
    """A split's images in the seeded hash order of their keys: classes mixed, fixed for a listing and seed."""
    return sorted(items, key=lambda i: hashlib.sha256(f"airflow-tl-shards\n{seed}\n{i.key}".encode()).digest())


def prepare_shards(
    store: S3Store,
    dataset_uri: str,
    *,
    seed: int = 0,
    layout: str = "auto",
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    shard_mb: float = DEFAULT_SHARD_MB,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    threads: int = 16,
) -> ShardsResult:
    """Write ``<dataset_uri>/shards/``: the dataset's images in tar shards of at most ``shard_mb`` MB and
    ``shard_images`` images (a single larger image gets a shard of its own), with manifest and index."""
    if not (isinstance(shard_images, int) and shard_images >= 1) or not shard_mb > 0:
        raise InvalidArgumentError(
            f"Arguments shard_mb and shard_images must be positive. Provided values: {shard_mb!r}, {shard_images!r}."
        )
    root = parse_s3_uri(dataset_uri, what="Dataset URI")
    dataset = list_dataset(store, dataset_uri, seed=seed, layout=layout, fractions=fractions, for_training=False)
    if SHARDS_FOLDER in dataset.class_names:
        raise DatasetError(
            f"Dataset {dataset_uri} has a class folder named {SHARDS_FOLDER!r}, where its sharded form goes. "
            "Rename that class folder."
        )
    folder = str(root.join(SHARDS_FOLDER)).rstrip("/")
    packing = {"shard_mb": shard_mb, "shard_images": shard_images}
    existing = _existing(store, folder)
    same = existing is not None and (existing.fingerprint, existing.seed) == (dataset.fingerprint(), seed)
    if same and existing.packing == packing:
        log.info("%s already holds this listing in %d shards; nothing to write", folder, len(existing.shards))
        return _result(existing, cache_hit=True)
    if existing is not None:
        store.delete(f"{folder}/{INDEX_FILE}")  # readers must never pair the old index with new shards
    started = time.monotonic()
    order = {split: packing_order(dataset.split(split), seed) for split in SPLITS}
    writer = _Writer(store, dataset, folder, int(shard_mb * 1024 * 1024), shard_images, threads)
    entries = [entry for split in SPLITS for entry in writer.split(split, order[split])]
    splits = {split: [(item.key, item.etag) for item in order[split]] for split in SPLITS}
    manifest = DataManifest(dataset.uri, dataset.fingerprint(), dataset.class_names, splits).to_bytes()
    store.put_bytes(f"{folder}/{MANIFEST_FILE}", manifest, content_type="application/gzip")
    index = ShardIndex(
        folder, dataset.uri, dataset.fingerprint(), dataset.class_names, dataset.layout, seed, tuple(fractions),
        hashlib.sha256(manifest).hexdigest(), entries, datetime.now(timezone.utc).isoformat(timespec="seconds"),
        packing,
    )  # fmt: skip
    store.put_bytes(f"{folder}/{INDEX_FILE}", index.to_bytes(), content_type="application/json")
    _remove_stale(store, folder, {entry.file for entry in entries})
    rate = len(dataset.items) / max(time.monotonic() - started, 1e-9)
    log.info("Prepared %s: %d shards, %d images at %.0f images/s", folder, len(entries), len(dataset.items), rate)
    return _result(index, cache_hit=False, rate=rate)


class _Writer:
    """Packs one split after another into shards, fetching images ahead in threads."""

    def __init__(self, store, dataset: ImageDataset, folder: str, max_bytes: int, max_images: int, threads: int):
        self.store, self.dataset, self.folder = store, dataset, folder
        self.max_bytes, self.max_images, self.threads = max_bytes, max_images, threads

    def split(self, split: str, items: list[ImageItem]) -> list[ShardEntry]:
        """Shards of one split's images, in the given order."""
        entries: list[ShardEntry] = []
        batch: list[tuple[ImageItem, bytes]] = []
        size = 0
        for position, (item, data) in enumerate(self._fetched(items)):
            if batch and (size + len(data) > self.max_bytes or len(batch) == self.max_images):
                entries.append(self._write(split, len(entries), position - len(batch), batch, len(items)))
                batch, size = [], 0
            batch.append((item, data))
            size += len(data)
        if batch:
            entries.append(self._write(split, len(entries), len(items) - len(batch), batch, len(items)))
        return entries

    def _write(self, split: str, number: int, first: int, batch: list[tuple[ImageItem, bytes]], total: int):
        file = f"{split}-{number:06d}.tar"
        sizes = []

        def write(path: str) -> None:
            _tar(path, [(sample_name(split, first + i), item, data) for i, (item, data) in enumerate(batch)], self)
            sizes.append(os.path.getsize(path))

        sha256 = self.store.upload_written(f"{self.folder}/{file}", write)
        entry = ShardEntry(file, split, len(batch), sizes[0], sha256)
        log.info(
            "Wrote %s/%s: %d %s images, %.1f MB (%d of %d)",
            self.folder, file, len(batch), split, entry.bytes / 1e6, first + len(batch), total,
        )  # fmt: skip
        return entry

    def _fetched(self, items: list[ImageItem]) -> Iterator[tuple[ImageItem, bytes]]:
        window = max(64, 4 * self.threads)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="airflow-tl-shard-writer") as pool:
            for item, future in submitted_ahead(pool, self._get, items, window):
                yield item, future.result()

    def _get(self, item: ImageItem) -> bytes:
        uri = f"s3://{self.dataset.bucket}/{item.key}"
        found = self.store.get_with_etag(uri)
        if found is None or found[1].strip('"') != item.etag:
            what = "no longer exists" if found is None else "was replaced"
            raise DatasetChangedError(
                f"Dataset {self.dataset.uri}: image {uri} {what} since it was listed. Prepare the shards again "
                "once the data is stable."
            )
        return found[0]


def _tar(path: str, samples: list[tuple[str, ImageItem, bytes]], writer: _Writer) -> None:
    """A WebDataset tar: per sample the image, ``.cls`` and ``.json``. Fixed metadata: same input, same bytes."""
    names = writer.dataset.class_names
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, item, data in samples:
            extension = item.key.rsplit(".", 1)[-1].lower()
            meta = {"key": item.key, "etag": item.etag, "class": names[item.label]}
            files = ((extension, data), ("cls", str(item.label).encode()), ("json", json.dumps(meta).encode()))
            for ext, content in files:
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size, info.mtime, info.mode = len(content), 0, 0o444
                tar.addfile(info, io.BytesIO(content))


def _existing(store: S3Store, folder: str) -> ShardIndex | None:
    """The index a previous preparation left, or None (also when it cannot be read: it is rewritten)."""
    try:
        return read_index(store, folder)
    except ShardError as err:
        if store.exists(f"{folder}/{INDEX_FILE}"):
            log.warning("Replacing the unreadable %s/%s: %s", folder, INDEX_FILE, err)
        return None


def _remove_stale(store: S3Store, folder: str, keep: set[str]) -> None:
    """Shards of an earlier preparation that this one did not rewrite: no index names them any more."""
    stale = [o for o in store.list(folder) if o.key.endswith(".tar") and o.key.rsplit("/", 1)[-1] not in keep]
    for obj in stale:
        store.delete(obj.uri)
    if stale:
        log.info("Removed %d shards of an earlier preparation from %s", len(stale), folder)


def _result(index: ShardIndex, *, cache_hit: bool, rate: float | None = None) -> ShardsResult:
    total = sum(entry.bytes for entry in index.shards)
    rounded = round(rate, 1) if rate is not None else None
    return ShardsResult(index.uri, cache_hit, index.counts(), len(index.shards), total, index.fingerprint, rounded)
