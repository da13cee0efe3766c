"""Seed the demo: the digits datasets and a source model in an S3 "model zoo"."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from airflow_tl.demo.digits import SOURCE_CLASSES, TARGET_CLASSES, digit_images
from airflow_tl.exceptions import InvalidModelCardError, ObjectNotFoundError
from airflow_tl.models.architectures import describe_blocks, head_prefixes
from airflow_tl.models.card import ModelCard
from airflow_tl.models.folder import read_card, save_model_folder
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

DEMO_BUCKET = "airflow-tl-demo"
SEED_VERSION = 1  # bump when the demo data or source recipe changes, so old seeds are rebuilt


@dataclass(frozen=True)
class DemoURIs:
    bucket: str

    def _uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    @property
    def source_dataset(self) -> str:
        return self._uri("datasets/digits-0-4")

    @property
    def target_dataset(self) -> str:
        return self._uri("datasets/digits-5-9")

    @property
    def source_model(self) -> str:
        return self._uri("zoo/resnet18-digits-0-4")

    @property
    def work(self) -> str:
        return self._uri("work")

    @property
    def registry(self) -> str:
        return self._uri("registry")

    def as_dict(self) -> dict[str, str]:
        names = ("source_dataset", "target_dataset", "source_model", "work", "registry")
        return {name: getattr(self, name) for name in names}


def upload_dataset(store: S3Store, images, uri: str, threads: int = 16) -> int:
    root = parse_s3_uri(uri)

    def put(image) -> None:
        store.put_bytes(root.join(image.key), image.png, content_type="image/png")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, images))
    return len(images)


def _seeded_model_exists(store: S3Store, uri: str, seed: int, epochs: int) -> bool:
    """Whether ``uri`` holds the source model of this seed; a missing or unreadable card means seed it again."""
    try:
        card = read_card(store, uri)
    except (ObjectNotFoundError, InvalidModelCardError):
        return False
    return card.lineage.get("demo_seed") == {"version": SEED_VERSION, "seed": seed, "epochs": epochs}


def seed_demo(
    store: S3Store, *, bucket: str = DEMO_BUCKET, seed: int = 0, force: bool = False, epochs: int = 8
) -> DemoURIs:
    """Upload both digit datasets and publish the pretrained source model (skipped when already there)."""
    from airflow_tl.demo.source_model import ARCHITECTURE, DIGITS_INPUT, pretrain

    uris = DemoURIs(bucket)
    store.ensure_bucket(bucket)
    source_images = digit_images(SOURCE_CLASSES, seed)
    for classes, images, uri in (
        (SOURCE_CLASSES, source_images, uris.source_dataset),
        (TARGET_CLASSES, digit_images(TARGET_CLASSES, seed), uris.target_dataset),
    ):
        count = upload_dataset(store, images, uri)
        log.info("Uploaded %d images of digits %s to %s", count, "".join(classes), uri)

    if not force and _seeded_model_exists(store, uris.source_model, seed, epochs):
        log.info("Source model %s is already seeded; pass --force to retrain it", uris.source_model)
        return uris
    log.info(
        "Pretraining %s on digits %s (the source task)", ARCHITECTURE, "–".join((SOURCE_CLASSES[0], SOURCE_CLASSES[-1]))
    )
    model, info = pretrain(source_images, SOURCE_CLASSES, seed=seed, epochs=epochs)
    card = ModelCard(
        architecture=ARCHITECTURE,
        class_names=list(SOURCE_CLASSES),
        input=DIGITS_INPUT,
        blocks=describe_blocks(ARCHITECTURE, model),
        head=list(head_prefixes(ARCHITECTURE)),
        lineage={
            "source": "sklearn.datasets.load_digits (digits 0-4)",
            "init": "random",
            "demo_seed": {"version": SEED_VERSION, "seed": seed, "epochs": epochs},
        },
        training={"task": "digits 0-4", "epochs": info["epochs"], "optimizer": "AdamW", "seed": seed},
        history=info["history"],
        metrics={"val_accuracy": info["val_accuracy"]},
    )
    save_model_folder(store, uris.source_model, model.state_dict(), card)
    return uris
