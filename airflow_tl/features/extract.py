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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
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
    num_processes: int = 1,
    worker_store: Callable[[], S3Store] | None = None,
) -> FeatureResult:
    """Features of every image under ``<features_root>/<cache key>/``, computed only when not cached.

    ``model_folder`` is ``load_model_folder(store, model_uri)`` when the caller has already read it (the
    assessment needs the source's head too): a large model's weights are then read from S3 once, not twice.
    ``place`` is where the network runs (the CPU by default); features are stored as float32 either way, and
    the cache key leaves the device out: features agree across devices to autocast's tolerance.

    ``num_processes`` > 1: each process (``training.launch``; on CUDA each on its own GPU, when ``place`` is one)
    extracts a contiguous block of every split into shards of its own, and this process writes the index with
    the shards in block order: the rows come out in the order one process writes them. ``worker_store`` is how
    each process builds its S3 client.
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
    log.info("Feature cache miss: extracting features of %s with %s into %s", dataset.uri, model_uri, folder)
    started = time.monotonic()
    work = {
        "model_uri": model_uri, "folder": str(folder), "batch_size": batch_size, "threads": threads,
        "skip_corrupt": skip_corrupt, "shard_rows": shard_rows,
    }  # fmt: skip
    if num_processes == 1:
        parts = [_extract_part(store, dataset=dataset, place=place, model_folder=model_folder, **work)]
    else:
        parts = _extract_in_processes(dataset, place, num_processes, worker_store, work)
    counts = {split: sum(p.counts[split] for p in parts) for split in SPLITS}
    shards = {split: [s for p in parts for s in p.shards[split]] for split in SPLITS}
    skipped = sorted({key for p in parts for key in p.skipped})
    manifest = dataset.manifest().to_bytes()
    store.put_bytes(folder.join(MANIFEST_FILE), manifest)
    rate = sum(counts.values()) / max(time.monotonic() - started, 1e-9)
    log.info("Extracted %s features (%.0f images/s)", ", ".join(f"{n} {s}" for s, n in counts.items()), rate)
    index = {
        "format_version": FORMAT_VERSION,
        "model_uri": model_uri,
        "weights_sha256": card.weights_sha256,
        "architecture": card.architecture,
        "feature_dim": parts[0].dim,
        "class_names": dataset.class_names,
        "dataset_uri": dataset.uri,
        "dataset_fingerprint": dataset.fingerprint(),
        "data_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "input": asdict(card.input),
        "counts": counts,
        "shards": shards,
        "skipped_corrupt": skipped,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": parts[0].device,
        **({"processes": num_processes} if num_processes > 1 else {}),
    }
    store.put_bytes(folder.join(INDEX_FILE), json.dumps(index, indent=2).encode(), content_type="application/json")
    passes = sum(p.passes for p in parts)
    return FeatureResult(str(folder), False, counts, parts[0].dim, passes, round(rate, 1), skipped)


@dataclass
class _Part:
    """What one process extracted: its shards by split, in order, and what it saw."""

    shards: dict[str, list[dict]]
    counts: dict[str, int]
    dim: int
    passes: int
    skipped: list[str]
    device: dict[str, Any]


def _extract_part(
    store, *, model_uri, dataset, folder, batch_size, threads, skip_corrupt, shard_rows, place, model_folder=None,
    shard_prefix: str = "",
) -> _Part:  # fmt: skip
    state_dict, card = model_folder if model_folder is not None else load_model_folder(store, model_uri)
    model, dim = as_feature_extractor(instantiate(card, state_dict, source=model_uri), card.architecture)
    place.model(model)
    stream = ImageStream(store, dataset, card.input, batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt)
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    pending: dict[str, tuple[list, list]] = {split: ([], []) for split in SPLITS}
    passes = 0

    def flush(split: str) -> None:
        rows, labels = pending[split]
        if rows:
            name = f"{split}-{shard_prefix}{len(shards[split]):05d}"
            shards[split].append(_write_shard(store, folder, name, rows, labels))
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
    return _Part(shards, counts, dim, passes, sorted(stream.skipped), place.describe())


def _extract_in_processes(dataset, place: Placement, num_processes: int, worker_store, work: dict) -> list[_Part]:
    from airflow_tl.training.launch import Job, errors_folder, launch

    if worker_store is None:
        raise InvalidArgumentError("num_processes > 1 needs worker_store: how each process builds its S3 client.")
    kind = "cuda" if place.is_cuda else "cpu"
    with errors_folder() as errors:
        job = Job(_extract_rank, {"dataset": dataset, "device": kind, **work}, worker_store, "gloo", errors)
        results = launch(job, num_processes=num_processes)
    return [results[rank] for rank in sorted(results)]


def _extract_rank(*, world, store: S3Store, dataset: ImageDataset, device: str, **work) -> _Part:
    """One process's block: the same contiguous share of every split, into shards named after its rank."""
    from airflow_tl.devices import placement

    place = placement(f"cuda:{world.local_rank}" if device == "cuda" else "cpu")
    items = []
    for split in SPLITS:
        part = dataset.split(split)
        items += part[len(part) * world.rank // world.size : len(part) * (world.rank + 1) // world.size]
    block = replace(dataset, items=items)
    return _extract_part(store, dataset=block, place=place, shard_prefix=f"r{world.rank:03d}-", **work)


def _write_shard(store: S3Store, folder: str, name: str, rows, labels) -> dict:
    tensors = {"features": torch.cat(rows).contiguous(), "labels": torch.cat(labels).contiguous()}
    rows.clear()  # the batches now live on in ``tensors`` only
    name = f"{name}.safetensors"
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
