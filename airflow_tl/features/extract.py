"""Extract features over train/val/test into safetensors shards, cached under a content key.

The key covers the weights (sha256), the dataset listing (keys, ETags, split, classes) and the
preprocessing, so any change recomputes and nothing else does. ``index.json`` is written last: a
cache folder without it is incomplete and is recomputed. Only a missing index means "not cached": an
index that cannot be read for any other reason fails the task with its URI.

Shards go through a local temporary file both ways (multipart above ``MULTIPART_THRESHOLD``), so a
large shard is never held in memory twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from airflow_tl.data.dataset import SPLITS, ImageDataset
from airflow_tl.data.loader import ImageStream
from airflow_tl.data.manifest import MANIFEST_FILE
from airflow_tl.data.preprocess import PIXELS_VERSION
from airflow_tl.devices import Placement, cpu
from airflow_tl.exceptions import InvalidArgumentError, ObjectNotFoundError
from airflow_tl.features.backbone import as_feature_extractor
from airflow_tl.models.card import ModelCard
from airflow_tl.models.folder import instantiate, load_model_folder, read_card
from airflow_tl.storage.s3 import S3Store
from airflow_tl.storage.tensors import read_tensors, write_tensors
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
# 2: the folder holds the data manifest of the listing it was extracted from.
FORMAT_VERSION = 2


@dataclass
class FeatureResult:
    uri: str
    cache_hit: bool
    counts: dict[str, int]
    feature_dim: int
    forward_passes: int = 0
    images_per_s: float | None = None
    skipped_corrupt: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped_corrupt"] = len(self.skipped_corrupt)
        return data


def cache_key(card: ModelCard, dataset: ImageDataset, *, skip_corrupt: bool) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "weights_sha256": card.weights_sha256,
        "architecture": card.architecture,
        "head": card.head,
        "input": asdict(card.input),
        "pixels": PIXELS_VERSION,
        "dataset": dataset.fingerprint(),
        "skip_corrupt": skip_corrupt,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def extract_features(
    store: S3Store,
    *,
    model_uri: str,
    dataset: ImageDataset,
    features_root: str,
    batch_size: int = 64,
    threads: int = 8,
    skip_corrupt: bool = False,
    shard_rows: int = 8192,
    model_folder: tuple[dict[str, torch.Tensor], ModelCard] | None = None,
    place: Placement | None = None,
) -> FeatureResult:
    """Features of every image under ``<features_root>/<cache key>/``, computed only when not cached.

    ``model_folder`` is ``load_model_folder(store, model_uri)`` when the caller has already read it (the
    assessment needs the source's head too): a large model's weights are then read from S3 once, not twice.
    ``place`` is where the network runs (the CPU by default); features are stored as float32 either way, and
    the cache key leaves the device out: features agree across devices to autocast's tolerance.
    """
    place = place or cpu()
    card = model_folder[1] if model_folder is not None else read_card(store, model_uri)
    folder = parse_s3_uri(features_root, what="features_root").join(cache_key(card, dataset, skip_corrupt=skip_corrupt))
    cached = _read_index(store, str(folder))
    if cached is not None:
        log.info("Feature cache hit: %s already holds these features; no forward pass needed", folder)
        return FeatureResult(
            str(folder), True, cached["counts"], cached["feature_dim"], 0, None, cached["skipped_corrupt"]
        )

    state_dict, card = model_folder if model_folder is not None else load_model_folder(store, model_uri)
    model, dim = as_feature_extractor(instantiate(card, state_dict, source=model_uri), card.architecture)
    place.model(model)
    stream = ImageStream(store, dataset, card.input, batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt)
    log.info(
        "Feature cache miss: extracting %d-dim features of %s with %s into %s", dim, dataset.uri, model_uri, folder
    )
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    pending: dict[str, tuple[list, list]] = {split: ([], []) for split in SPLITS}
    passes, started = 0, time.monotonic()

    def flush(split: str) -> None:
        rows, labels = pending[split]
        if rows:
            shards[split].append(_write_shard(store, str(folder), split, len(shards[split]), rows, labels))
            pending[split] = ([], [])

    # One stream over all splits, so loading never pauses at a split boundary.
    for batch in stream.batches(SPLITS):
        with torch.inference_mode(), place.autocast():
            pending[batch.split][0].append(model(*place.batch(batch.x)).float().cpu())
        pending[batch.split][1].append(batch.y)
        passes += 1
        counts[batch.split] += len(batch.y)
        if sum(len(r) for r in pending[batch.split][0]) >= shard_rows:
            flush(batch.split)
    for split in SPLITS:
        flush(split)
    manifest = dataset.manifest().to_bytes()
    store.put_bytes(folder.join(MANIFEST_FILE), manifest)
    rate = sum(counts.values()) / max(time.monotonic() - started, 1e-9)
    log.info("Extracted %s features (%.0f images/s)", ", ".join(f"{n} {s}" for s, n in counts.items()), rate)
    index = {
        "format_version": FORMAT_VERSION,
        "model_uri": model_uri,
        "weights_sha256": card.weights_sha256,
        "architecture": card.architecture,
        "feature_dim": dim,
        "class_names": dataset.class_names,
        "dataset_uri": dataset.uri,
        "dataset_fingerprint": dataset.fingerprint(),
        "data_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "input": asdict(card.input),
        "counts": counts,
        "shards": shards,
        "skipped_corrupt": sorted(stream.skipped),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": place.describe(),
    }
    store.put_bytes(folder.join(INDEX_FILE), json.dumps(index, indent=2).encode(), content_type="application/json")
    return FeatureResult(str(folder), False, counts, dim, passes, round(rate, 1), sorted(stream.skipped))


def _write_shard(store: S3Store, folder: str, split: str, number: int, rows, labels) -> dict:
    tensors = {"features": torch.cat(rows).contiguous(), "labels": torch.cat(labels).contiguous()}
    rows.clear()  # the batches now live on in ``tensors`` only
    name = f"{split}-{number:05d}.safetensors"
    sha256 = write_tensors(store, f"{folder}/{name}", tensors)
    return {"file": name, "rows": len(tensors["labels"]), "sha256": sha256}


def _read_index(store: S3Store, folder: str) -> dict | None:
    uri = f"{folder}/{INDEX_FILE}"
    try:
        raw = store.get_bytes(uri)
    except ObjectNotFoundError:
        return None
    try:
        index = json.loads(raw)
    except ValueError as err:
        log.warning("Feature cache index %s is not valid JSON (%s); treating the cache as incomplete", uri, err)
        return None
    return index if isinstance(index, dict) and index.get("format_version") == FORMAT_VERSION else None


def read_cached_index(store: S3Store, features_uri: str) -> dict | None:
    """The index of a complete features folder, or None when it is not (yet) there."""
    return _read_index(store, features_uri.rstrip("/"))


def read_features_index(store: S3Store, features_uri: str) -> dict:
    """The index of a complete features folder, or a clear error."""
    index = _read_index(store, features_uri.rstrip("/"))
    if index is None:
        raise InvalidArgumentError(f"{features_uri} is not a complete features folder (no {INDEX_FILE}).")
    return index


def load_split(store: S3Store, features_uri: str, index: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of one split, each shard checked against its sha256."""
    xs, ys = [torch.empty(0, index["feature_dim"])], [torch.empty(0, dtype=torch.long)]
    for shard in index["shards"].get(split, []):
        uri = f"{features_uri.rstrip('/')}/{shard['file']}"
        tensors = read_tensors(store, uri, shard["sha256"], name=f"features shard {uri}")
        xs.append(tensors["features"])
        ys.append(tensors["labels"])
    return torch.cat(xs), torch.cat(ys)
