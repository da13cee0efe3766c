"""Every image under a prefix, to be scored: any folder depth, no classes or splits needed.

A prefix of class folders (a labelled dataset) is read the same way: folder names are not labels here. A
``.../shards`` URI is the sharded form of a dataset (data/shards.py): its images are read from the shards.
"""

from __future__ import annotations

import logging

from airflow_tl.data.dataset import LIST_THREADS, ImageDataset, ImageItem, open_sharded, report_ignored
from airflow_tl.data.decode import IMAGE_EXTENSIONS
from airflow_tl.data.errors import DatasetError
from airflow_tl.data.shards import SHARDS_FOLDER, is_shards_uri
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

SPLIT = "images"  # what the image stream calls the one group of a prefix's images
NO_LABEL = -1


def list_images(store: S3Store, uri: str, *, exclude: str | None = None) -> ImageDataset:
    """The images under ``uri`` sorted by key, as a dataset without classes (labels ``NO_LABEL``).

    ``exclude``: a prefix whose objects are not images to score (the predictions, when written under ``uri``).
    Hidden files and non-image objects are skipped and counted in one log line; a prefix without any image is
    an error, since a scheduled run on a mistyped prefix should not succeed by scoring nothing.
    """
    root = parse_s3_uri(uri, what="Dataset URI")
    if is_shards_uri(uri):
        return open_sharded(store, uri)
    excluded = parse_s3_uri(exclude, what="Output URI") if exclude else None
    skip = excluded.folder_key if excluded and excluded.bucket == root.bucket else None
    objects = store.list(root, threads=LIST_THREADS)
    items, ignored = [], []
    for obj in objects:
        rel = obj.key[len(root.folder_key) :]
        if (skip and obj.key.startswith(skip)) or rel.endswith("/") or rel.startswith(f"{SHARDS_FOLDER}/"):
            continue  # the predictions, folder markers, and a sharded copy of these very images
        name = rel.rsplit("/", 1)[-1]
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
            items.append(ImageItem(obj.key, obj.etag, obj.size, NO_LABEL, SPLIT))
        else:
            ignored.append(rel)
    report_ignored(uri, ignored)
    if not items:
        raise DatasetError(
            f"{uri} holds no images to score ({', '.join(IMAGE_EXTENSIONS)}, any case); found {len(objects)} "
            "objects. Check dataset_uri."
        )
    items.sort(key=lambda item: item.key)
    log.info("%d images under %s", len(items), uri)
    return ImageDataset(uri.rstrip("/"), root.bucket, [], items, "prefix")


def splits_of(dataset: ImageDataset) -> tuple[str, ...]:
    """The groups to stream: the one group of a prefix, or the splits a sharded dataset holds."""
    return tuple(sorted({item.split for item in dataset.items}))
