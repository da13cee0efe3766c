"""The sharded form of a dataset: WebDataset tar shards under ``<prefix>/shards/`` and the index that vouches for them.

A dataset of millions of images costs one GET per image per epoch and one LIST page per thousand images per
task. Its sharded form (DESIGN.md) packs the images into ``{train,val,test}-NNNNNN.tar`` in the WebDataset
layout, each sample ``<name>.<image extension>`` + ``<name>.cls`` (the label) + ``<name>.json`` (source key,
ETag, class), so one GET reads a thousand images and ``webdataset.WebDataset`` reads the files as they are.

``index.json`` is written last (data/shard_writer.py) and is the only thing a reader trusts: the split, the
class names and the seed it was prepared with, ``manifest.json.gz`` (the data manifest of the source listing,
in shard order), and each shard's count, size and sha256. A shard that is missing, shorter than its size,
or differs from its hash is an error naming it, before any of its images is used.

Why not the ``webdataset`` library for reading: its readers open URLs through ``pipe:`` commands or fsspec,
outside the task's Airflow connection, our retries of bodies that break off and our integrity checks; a shard
here is one GET through ``S3Store`` and stdlib ``tarfile``, which is all the format needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_tl.data.errors import ShardError
from airflow_tl.data.layout import SPLITS
from airflow_tl.data.manifest import DataManifest
from airflow_tl.exceptions import ObjectNotFoundError
from airflow_tl.storage.s3 import S3Store

SHARDS_FOLDER = "shards"
INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json.gz"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardEntry:
    file: str  # e.g. train-000003.tar
    split: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardIndex:
    """What ``index.json`` says: where the images came from, how they were split, and every shard."""

    uri: str  # the shards folder
    source_uri: str
    fingerprint: str  # of the source listing the shards were made from
    class_names: list[str]
    layout: str
    seed: int
    fractions: tuple[float, float, float]
    manifest_sha256: str
    shards: list[ShardEntry]
    created_at: str = ""
    packing: dict[str, Any] = field(default_factory=dict)  # the sizes asked for: shard_mb, shard_images

    def of(self, split: str) -> list[int]:
        """Positions in ``shards`` of one split's shards, in order."""
        return [i for i, entry in enumerate(self.shards) if entry.split == split]

    def counts(self) -> dict[str, int]:
        return {s: sum(e.count for e in self.shards if e.split == s) for s in SPLITS}

    def shard_uri(self, position: int) -> str:
        return f"{self.uri}/{self.shards[position].file}"

    def to_bytes(self) -> bytes:
        document = {
            "format_version": FORMAT_VERSION,
            "format": "webdataset",
            "source_uri": self.source_uri,
            "fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "layout": self.layout,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "manifest": {"file": MANIFEST_FILE, "sha256": self.manifest_sha256},
            "counts": self.counts(),
            "shards": [asdict(entry) for entry in self.shards],
            "created_at": self.created_at,
            "packing": self.packing,
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, uri: str) -> ShardIndex:
        where = f"{uri}/{INDEX_FILE}"
        try:
            document = json.loads(raw)
            version = document.get("format_version")
        except (ValueError, AttributeError) as err:
            raise ShardError(f"Shard index {where} is not a JSON object: {err}.") from None
        if version != FORMAT_VERSION:
            raise ShardError(
                f"Shard index {where} has format_version {version!r}; this airflow-tl reads {FORMAT_VERSION}. "
                "Prepare the shards again with this version."
            )
        try:
            index = cls(
                uri,
                document["source_uri"],
                document["fingerprint"],
                list(document["class_names"]),
                document["layout"],
                int(document["seed"]),
                tuple(float(f) for f in document["fractions"]),
                document["manifest"]["sha256"],
                [ShardEntry(**entry) for entry in document["shards"]],
                document.get("created_at", ""),
                dict(document.get("packing", {})),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ShardError(f"Shard index {where} cannot be read: {type(err).__name__}: {err}.") from None
        problems = index._problems()
        if problems:
            raise ShardError(f"Shard index {where} is invalid: {'; '.join(problems)}.")
        return index

    def _problems(self) -> list[str]:
        problems = [f"shard {e.file} has split {e.split!r}" for e in self.shards if e.split not in SPLITS]
        problems += [f"shard {e.file} has count {e.count}" for e in self.shards if e.count < 1]
        names = [e.file for e in self.shards]
        if len(set(names)) != len(names):
            problems.append("a shard is listed twice")
        if not self.shards:
            problems.append("it lists no shards")
        return problems


def is_shards_uri(uri: str) -> bool:
    """Whether a dataset URI names the sharded form (its last folder is ``shards``)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] == SHARDS_FOLDER


def sample_name(split: str, position: int) -> str:
    """The WebDataset key of the image at ``position`` of a split's shard order: no dots, unique in the dataset."""
    return f"{split}-{position:09d}"


def read_index(store: S3Store, uri: str) -> ShardIndex:
    """The index of a shards folder; an error that says how to make one when there is none."""
    uri = uri.rstrip("/")
    try:
        raw = store.get_bytes(f"{uri}/{INDEX_FILE}")
    except ObjectNotFoundError:
        source = uri[: -len(SHARDS_FOLDER)].rstrip("/")
        raise ShardError(
            f"{uri} has no {INDEX_FILE}: it is not a prepared (or completely prepared) sharded dataset. Prepare it "
            f"from the image folders with PrepareShardsOperator(dataset_uri={source!r}), or give the image folders "
            "themselves as dataset_uri."
        ) from None
    return ShardIndex.from_bytes(raw, uri=uri)


def read_manifest(store: S3Store, index: ShardIndex) -> DataManifest:
    """The source listing's manifest, in shard order, checked against the index's sha256."""
    uri = f"{index.uri}/{MANIFEST_FILE}"
    try:
        raw = store.get_bytes(uri)
    except ObjectNotFoundError:
        raise ShardError(f"{uri} is missing, but {index.uri}/{INDEX_FILE} lists it. Prepare again.") from None
    if hashlib.sha256(raw).hexdigest() != index.manifest_sha256:
        raise ShardError(f"{uri} differs from the sha256 its index records: it changed after the shards were made.")
    manifest = DataManifest.from_bytes(raw, uri=uri)
    counts = {split: len(manifest.splits.get(split, [])) for split in SPLITS}
    if counts != index.counts():
        raise ShardError(
            f"Shard index {index.uri}/{INDEX_FILE} counts {index.counts()} images, but its manifest lists {counts}: "
            "they disagree. Prepare the shards again."
        )
    return manifest


@dataclass(frozen=True)
class Sample:
    name: str  # the WebDataset key
    key: str  # the source object's key
    etag: str
    label: int
    data: bytes  # the encoded image


def read_shard(store: S3Store, index: ShardIndex, position: int) -> list[Sample]:
    """Every sample of one shard, after checking its size, sha256 and structure against the index."""
    entry, uri = index.shards[position], index.shard_uri(position)
    try:
        raw = store.get_bytes(uri)
    except ObjectNotFoundError:
        raise ShardError(
            f"Shard {uri} is missing: {index.uri}/{INDEX_FILE} lists it with {entry.count} images. "
            "Prepare the shards again."
        ) from None
    if len(raw) < entry.bytes:
        raise ShardError(f"Shard {uri} is truncated: {len(raw)} of the {entry.bytes} bytes its index records.")
    if len(raw) != entry.bytes or hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise ShardError(
            f"Shard {uri} disagrees with its index ({len(raw)} bytes, index: {entry.bytes}; sha256 differs): "
            "it was changed after the index was written. Prepare the shards again."
        )
    samples = parse_shard(raw, uri)
    if len(samples) != entry.count:
        raise ShardError(f"Shard {uri} holds {len(samples)} samples, but its index records {entry.count}.")
    return samples


def parse_shard(raw: bytes, uri: str) -> list[Sample]:
    """The samples of a tar in our WebDataset layout, in order; an error naming the shard for anything else."""
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                name, _, ext = base.partition(".")
                handle = tar.extractfile(member)
                groups.setdefault(name, {})[ext] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError) as err:
        raise ShardError(f"Shard {uri} is not a readable tar file: {err}.") from None
    return [_sample(name, files, uri) for name, files in groups.items()]


def _sample(name: str, files: dict[str, bytes], uri: str) -> Sample:
    images = [ext for ext in files if ext not in ("cls", "json")]
    if len(images) != 1 or "cls" not in files or "json" not in files:
        raise ShardError(f"Shard {uri}: sample {name} has files {sorted(files)}; expected one image, .cls and .json.")
    try:
        meta: dict[str, Any] = json.loads(files["json"])
        label = int(files["cls"])
        return Sample(name, str(meta["key"]), str(meta["etag"]), label, files[images[0]])
    except (ValueError, KeyError, TypeError) as err:
        raise ShardError(f"Shard {uri}: sample {name} has an unreadable label or .json ({err}).") from None
