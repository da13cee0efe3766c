"""Score every image under a prefix with a registry's champion (or a named version): PredictOperator's core.

The model is resolved once, at the start: a champion promoted while a run scores keeps that run on the version it
began with. Images already scored by that version (the same key and ETag, in a part or the rejects) are skipped,
so a re-run scores only new or replaced images and a retry finishes what an interrupted try began, without
duplicates. Rows are written in parts of ``part_rows`` as they are scored (predict/parts.py): memory holds one
part, whatever the number of images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_tl.data.dataset import ImageItem
from airflow_tl.data.errors import DatasetError
from airflow_tl.devices import Placement, placement
from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.predict.images import list_images, splits_of
from airflow_tl.predict.parts import (
    FORMAT_VERSION,
    REJECTS_FOLDER,
    new_token,
    part_name,
    predictions_table,
    rejects_table,
    scored_pairs,
    table_bytes,
    version_folder,
)
from airflow_tl.registry.store import Registry
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import S3URI, parse_s3_uri

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0


class NoChampionError(PermanentError, LookupError):
    """The registry has no champion to score with; the message names the registry."""


class UnknownVersionError(PermanentError, LookupError):
    """The version asked for is not a complete version of the registry's model."""


@dataclass
class PredictSpec:
    """What to score, with which model, and where the rows go. Validates itself; messages name the argument."""

    dataset_uri: str
    registry_uri: str
    model_name: str
    output_uri: str
    version: str | None = None
    batch_size: int = 64
    threads: int = 8
    skip_corrupt: bool = False
    part_rows: int = 50_000
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "threads", "part_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"Argument {name} must be a positive integer. Provided value: {value!r}.")
        if self.version is not None and (not isinstance(self.version, str) or not self.version.strip()):
            raise InvalidArgumentError(
                f"Argument version must be a version name such as 'v3', or None for the champion. "
                f"Provided value: {self.version!r}."
            )
        for name in ("dataset_uri", "registry_uri", "output_uri"):
            parse_s3_uri(getattr(self, name), what=name)
        output = parse_s3_uri(self.output_uri).folder_key
        dataset = parse_s3_uri(self.dataset_uri).folder_key
        same_bucket = parse_s3_uri(self.output_uri).bucket == parse_s3_uri(self.dataset_uri).bucket
        if same_bucket and dataset.startswith(output):
            raise InvalidArgumentError(
                f"Argument output_uri={self.output_uri!r} holds dataset_uri={self.dataset_uri!r}: the predictions "
                "would be written among the images. Give an output_uri outside the dataset."
            )


@dataclass
class PredictResult:
    model_name: str
    version: str
    model_uri: str
    output_uri: str  # the version's folder of parts
    images: int = 0
    already_scored: int = 0
    scored: int = 0
    rejected: int = 0
    parts: int = 0
    gone: int = 0  # listed, then deleted before they were read: not scored, not rejected
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The small JSON that becomes the task's XCom (each part's URI is in the task log)."""
        rate = round(self.scored / self.seconds, 1) if self.seconds else None
        return {
            "model_name": self.model_name,
            "version": self.version,
            "model_uri": self.model_uri,
            "output_uri": self.output_uri,
            "images": self.images,
            "already_scored": self.already_scored,
            "scored": self.scored,
            "rejected": self.rejected,
            "gone": self.gone,
            "parts_written": self.parts,
            "images_per_s": rate,
        }


def resolve_version(registry: Registry, version: str | None) -> str:
    """``version`` when it is a complete version of the model, else the champion's; errors name the registry."""
    if version is not None:
        if registry.is_complete(version):
            return version
        known = registry.versions()
        listed = ", ".join(known[-10:]) if known else "none"
        raise UnknownVersionError(
            f"Registry {registry.uri} has no complete version {version!r}. Its versions (newest last): {listed}."
        )
    state = registry.champion()
    if state.champion is None:
        why = state.problem or f"{registry.uri}/champion.json does not exist"
        raise NoChampionError(
            f"Registry {registry.uri} has no champion to predict with ({why}). Promote a version first (a strategy "
            "DAG's evaluate task, or the dashboard), or give version= to score with a named one."
        )
    return state.champion.version


def predict_images(
    store: S3Store, spec: PredictSpec, *, run: dict[str, Any] | None = None, place: Placement | None = None
) -> PredictResult:
    """Score every image under ``spec.dataset_uri`` not yet scored by the model's version; write them as parts."""
    import torch

    from airflow_tl.models.folder import instantiate, load_model_folder

    started = time.monotonic()
    registry = Registry(store, spec.registry_uri, spec.model_name)
    version = resolve_version(registry, spec.version)
    model_uri = registry.version_uri(version)
    folder = version_folder(parse_s3_uri(spec.output_uri, what="output_uri"), version)
    result = PredictResult(spec.model_name, version, model_uri, str(folder))
    dataset = list_images(store, spec.dataset_uri, exclude=spec.output_uri)
    done, parts_before = scored_pairs(store, folder, threads=spec.threads)
    todo = [item for item in dataset.items if (item.key, item.etag) not in done]
    result.images, result.already_scored = len(dataset.items), len(dataset.items) - len(todo)
    log.info(
        "%s version %s%s: %d images under %s, %d already scored in %d parts under %s, %d to score",
        spec.model_name, version, "" if spec.version else " (the champion)", result.images, spec.dataset_uri,
        result.already_scored, parts_before, folder, len(todo),
    )  # fmt: skip
    if not todo:
        return result
    state_dict, card = load_model_folder(store, model_uri)
    place = place or placement(spec.device)
    model = place.model(instantiate(card, state_dict, source=model_uri).eval())
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_name": spec.model_name,
        "model_version": version,
        "model_uri": model_uri,
        "model_sha256": card.weights_sha256,
        "class_names": card.class_names,
        "dataset_uri": spec.dataset_uri,
        "run": run or {},
    }
    writer = _PartWriter(store, folder, version, card.class_names, metadata, spec.part_rows, result)
    etags = {item.key: item.etag for item in todo}
    stream = _stream(store, dataset.only(set(etags)), card.input, spec, writer)
    try:
        with torch.inference_mode():
            for batch in stream.batches(splits_of(dataset)):
                with place.autocast():
                    logits = model(*place.batch(batch.x))
                probs = torch.softmax(logits.float(), dim=1).cpu()
                writer.add(batch.keys, [etags[key] for key in batch.keys], probs)
                writer.progress(len(todo), started)
    except DatasetError:
        writer.flush()  # what was scored before a permanent failure is kept: a later run skips it
        raise
    writer.flush()
    result.gone = len(stream.missing)
    result.seconds = time.monotonic() - started
    log.info(
        "Scored %d images with %s version %s in %.1f s (%.1f images/s): %d parts%s under %s",
        result.scored, spec.model_name, version, result.seconds, result.scored / result.seconds, result.parts,
        f", {result.rejected} images rejected (listed under {REJECTS_FOLDER}/)" if result.rejected else "", folder,
    )  # fmt: skip
    return result


def _stream(store: S3Store, dataset, spec_input, spec: PredictSpec, writer: _PartWriter):
    from airflow_tl.data.loader import CorruptImagesError, ImageStream

    def corrupt(item: ImageItem, reason: str) -> None:
        if not spec.skip_corrupt:
            raise CorruptImagesError(
                f"Image s3://{dataset.bucket}/{item.key} cannot be decoded: {reason}. Fix or remove it, or set "
                f"skip_corrupt to list it in the rejects under {writer.folder}/{REJECTS_FOLDER}/ and go on."
            )
        log.warning("Rejected s3://%s/%s: %s", dataset.bucket, item.key, reason)
        writer.reject(item, reason)

    # The stream's own skip_corrupt is on: the callback above applies the policy, image by image.
    return ImageStream(
        store, dataset, spec_input, batch_size=spec.batch_size, threads=spec.threads, skip_corrupt=True,
        on_corrupt=corrupt, skip_missing=True,
    )  # fmt: skip


class _PartWriter:
    """Rows in, complete parts out: a part is PUT once ``part_rows`` rows are waiting, rejects alongside."""

    def __init__(
        self,
        store: S3Store,
        folder: S3URI,
        version: str,
        class_names: list[str],
        metadata: dict[str, Any],
        part_rows: int,
        result: PredictResult,
    ) -> None:
        self.store, self.folder, self.version = store, folder, version
        self.class_names, self.metadata, self.part_rows = class_names, metadata, part_rows
        self.result = result
        self.token = new_token()
        self.numbers = {"": 0, REJECTS_FOLDER: 0}
        self.keys: list[str] = []
        self.etags: list[str] = []
        self.probs: list[Any] = []
        self.rejects: list[tuple[str, str, str]] = []
        self.logged = time.monotonic()

    def add(self, keys: list[str], etags: list[str], probs: Any) -> None:
        self.keys += keys
        self.etags += etags
        self.probs.append(probs)
        while len(self.keys) >= self.part_rows:
            self._put_rows(self.part_rows)

    def reject(self, item: ImageItem, reason: str) -> None:
        self.rejects.append((item.key, item.etag, reason))

    def flush(self) -> None:
        """PUT the waiting rows as one part (and the waiting rejects); nothing when nothing waits."""
        if self.keys:
            self._put_rows(len(self.keys))
        self._put_rejects()

    def _put_rows(self, count: int) -> None:
        """The first ``count`` waiting rows as one part; rejects met so far go out with it."""
        import torch

        probs = torch.cat(self.probs)
        keys, etags = self.keys[:count], self.etags[:count]
        now = datetime.now(timezone.utc)
        table = predictions_table(
            keys, etags, probs[:count].numpy(), self.class_names, self.version, now, self.metadata
        )
        self._put("", table)
        self.result.scored += count
        self.keys, self.etags, self.probs = self.keys[count:], self.etags[count:], [probs[count:]]
        self._put_rejects()

    def _put_rejects(self) -> None:
        if self.rejects:
            table = rejects_table(self.rejects, self.version, datetime.now(timezone.utc), self.metadata)
            self._put(REJECTS_FOLDER, table)
            self.result.rejected += len(self.rejects)
            self.rejects = []

    def _put(self, subfolder: str, table: Any) -> None:
        number = self.numbers[subfolder]
        self.numbers[subfolder] += 1
        parent = self.folder.join(subfolder) if subfolder else self.folder
        uri = parent.join(part_name(self.token, number))
        self.store.put_bytes(uri, table_bytes(table), content_type="application/vnd.apache.parquet")
        self.result.parts += 1
        log.info("Wrote %s (%d rows)", uri, table.num_rows)

    def progress(self, total: int, started: float) -> None:
        now = time.monotonic()
        if now - self.logged < PROGRESS_SECONDS:
            return
        self.logged = now
        done = self.result.scored + len(self.keys)
        log.info(
            "Scored %d of %d images (%.0f%%, %.1f images/s), %d parts written",
            done, total, 100 * done / total, done / (now - started), self.result.parts,
        )  # fmt: skip
