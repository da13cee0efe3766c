"""Landing new images in a dataset: the upstream step of retraining when data arrives.

Images wait under an incoming prefix in the dataset's own layout (``<split>/<class>/<file>`` or
``<class>/<file>``); landing moves each to the same relative key under the dataset. Copy first, delete
after, one image at a time: a task that dies half-way leaves every image in the dataset, in incoming, or
in both (landed again by the retry), never in neither. Objects that are not images stay where they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from airflow_tl.data.decode import IMAGE_EXTENSIONS
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)


@dataclass
class Landed:
    keys: list[str] = field(default_factory=list)  # dataset keys now holding a landed image
    left: list[str] = field(default_factory=list)  # incoming objects that are not images, left in place


def is_image_key(key: str) -> bool:
    """Whether an object's key names an image landing would move (by its extension, as the loader reads)."""
    return key.lower().endswith(IMAGE_EXTENSIONS)


def waiting_images(store: S3Store, incoming_uri: str) -> Landed:
    """What waits under ``incoming_uri`` without moving anything: image keys in ``keys``, other URIs in ``left``."""
    incoming = parse_s3_uri(incoming_uri, what="incoming_uri")
    found = Landed()
    for obj in store.list(incoming):
        if is_image_key(obj.key):
            found.keys.append(obj.key)
        else:
            found.left.append(obj.uri)
    return found


def land_images(store: S3Store, *, incoming_uri: str, dataset_uri: str) -> Landed:
    """Move the images under ``incoming_uri`` into ``dataset_uri``, keeping their relative keys."""
    incoming = parse_s3_uri(incoming_uri, what="incoming_uri")
    dataset = parse_s3_uri(dataset_uri, what="dataset_uri")
    if incoming.folder_key.startswith(dataset.folder_key) and incoming.bucket == dataset.bucket:
        raise InvalidArgumentError(
            f"Argument incoming_uri {incoming} lies inside dataset_uri {dataset}: its images would be listed twice."
        )
    landed = Landed()
    for obj in store.list(incoming):
        relative = obj.key[len(incoming.folder_key) :]
        if not is_image_key(relative):
            landed.left.append(obj.uri)
            continue
        target = dataset.join(relative)
        store.copy(obj.uri, target)
        store.delete(obj.uri)
        landed.keys.append(target.key)
    log.info("Landed %d images from %s in %s", len(landed.keys), incoming, dataset)
    if landed.left:
        log.warning("Left %d objects that are not images in %s, e.g. %s", len(landed.left), incoming, landed.left[0])
    return landed
