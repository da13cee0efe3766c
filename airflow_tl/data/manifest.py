"""Data manifests: exactly which images (key and ETag) a model trained, validated and was tested on.

``data_manifest.json.gz`` travels with a trained model folder into its registry version (DESIGN.md):
gzip JSON with ``dataset_uri``, ``fingerprint``, ``class_names`` and ``splits: {train|val|test: [[key,
etag], ...]}``. The gate reads two of them to compare a candidate and the champion only on test images
neither trained or validated on, and tasks of one run compare them to notice a dataset that changed
under them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from airflow_tl.data.layout import SPLITS
from airflow_tl.exceptions import IntegrityError, ObjectNotFoundError, PermanentError
from airflow_tl.storage.s3 import S3Store

MANIFEST_FILE = "data_manifest.json.gz"
FORMAT_VERSION = 1
_REQUIRED = ("dataset_uri", "fingerprint", "class_names", "splits")


class InvalidManifestError(PermanentError, ValueError):
    """A data manifest that cannot be read or contradicts itself."""


@dataclass(frozen=True)
class DataManifest:
    dataset_uri: str
    fingerprint: str
    class_names: list[str]
    splits: dict[str, list[tuple[str, str]]]  # split -> [(key, etag)], keys sorted

    def keys(self, *splits: str) -> set[str]:
        return {key for split in splits for key, _ in self.splits.get(split, [])}

    def to_bytes(self) -> bytes:
        document = {
            "format_version": FORMAT_VERSION,
            "dataset_uri": self.dataset_uri,
            "fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "splits": {split: [list(pair) for pair in self.splits.get(split, [])] for split in SPLITS},
        }
        # mtime=0: the same manifest always compresses to the same bytes, so a retry writes an identical file.
        return gzip.compress(json.dumps(document, sort_keys=True).encode(), mtime=0)

    @classmethod
    def from_bytes(cls, raw: bytes, *, uri: str) -> DataManifest:
        try:
            document = json.loads(gzip.decompress(raw))
        except (OSError, EOFError, ValueError) as err:
            raise InvalidManifestError(f"Data manifest {uri} is not gzip-compressed JSON: {err}.") from err
        problems = _problems(document)
        if problems:
            raise InvalidManifestError(f"Data manifest {uri} is invalid: {'; '.join(problems)}.")
        return cls(
            document["dataset_uri"],
            document["fingerprint"],
            list(document["class_names"]),
            {split: [(k, e) for k, e in document["splits"].get(split, [])] for split in SPLITS},
        )


def read_manifest(store: S3Store, folder_uri: str, *, sha256: str | None = None) -> DataManifest | None:
    """The manifest in a model folder or registry version; None when it has none (made before manifests existed).

    With ``sha256`` (from the model card's lineage) the file must match it.
    """
    uri = f"{folder_uri.rstrip('/')}/{MANIFEST_FILE}"
    try:
        raw = store.get_bytes(uri)
    except ObjectNotFoundError:
        if sha256:
            raise IntegrityError(f"{uri} is missing, but the model card says it holds sha256 {sha256}.") from None
        return None
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise IntegrityError(f"sha256 mismatch for {uri}: it was modified after the model was trained.")
    return DataManifest.from_bytes(raw, uri=uri)


def _problems(document: Any) -> list[str]:
    if not isinstance(document, dict):
        return ["expected a JSON object"]
    problems = [f"missing field {name!r}" for name in _REQUIRED if name not in document]
    if document.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        problems.append(f"format_version {document['format_version']!r} is not supported (expected {FORMAT_VERSION})")
    splits = document.get("splits")
    if "splits" in document and not (
        isinstance(splits, dict)
        and all(
            isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
            for pairs in splits.values()
        )
    ):
        problems.append("'splits' must map train/val/test to lists of [key, etag] pairs")
    return problems


def describe_change(before: DataManifest, after: DataManifest) -> str:
    """What changed between two listings of a dataset, in words: classes, then images added, removed, changed."""
    parts = []
    appeared = sorted(set(after.class_names) - set(before.class_names))
    vanished = sorted(set(before.class_names) - set(after.class_names))
    if appeared:
        parts.append(f"class folders appeared: {', '.join(appeared)}")
    if vanished:
        parts.append(f"class folders vanished: {', '.join(vanished)}")
    old, new = _by_key(before), _by_key(after)
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = sorted(k for k in old.keys() & new.keys() if old[k][0] != new[k][0])
    moved = sorted(k for k in old.keys() & new.keys() if old[k][0] == new[k][0] and old[k][1] != new[k][1])
    labelled = (("added", added), ("removed", removed), ("changed", changed), ("moved to another split", moved))
    for label, keys in labelled:
        if keys:
            parts.append(f"{len(keys)} images {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts) or "the listing differs in labels only"


def _by_key(manifest: DataManifest) -> dict[str, tuple[str, str]]:
    """key -> (etag, split)."""
    return {key: (etag, split) for split in SPLITS for key, etag in manifest.splits.get(split, [])}
