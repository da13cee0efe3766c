"""Small builders shared by the integration tests."""

from __future__ import annotations

import hashlib
import io

import torch

from airflow_tl.models.architectures import build_model, describe_blocks, head_prefixes
from airflow_tl.models.card import InputSpec, ModelCard
from airflow_tl.models.folder import save_model_folder

SMALL_INPUT = InputSpec(crop_size=32, resize_size=32, mean=[0.5] * 3, std=[0.25] * 3)


def random_state_dict(arch: str = "resnet18", num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(arch, num_classes).state_dict()


def publish_model(
    store, uri: str, arch: str = "resnet18", classes: list[str] | None = None, seed: int = 0
) -> ModelCard:
    """A model folder with random weights, as a model zoo would hold it."""
    classes = classes or ["a", "b", "c", "d", "e"]
    card = ModelCard(
        architecture=arch,
        class_names=classes,
        input=SMALL_INPUT,
        blocks=describe_blocks(arch),
        head=list(head_prefixes(arch)),
        lineage={"source": "tests"},
    )
    return save_model_folder(store, uri, random_state_dict(arch, len(classes), seed), card)


def hub_file(state_dict: dict, name: str = "resnet18") -> tuple[str, bytes]:
    """A checkpoint named as torch hub publishes it: ``<name>-<sha256 prefix>.pth``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    data = buffer.getvalue()
    return f"{name}-{hashlib.sha256(data).hexdigest()[:10]}.pth", data


def keys_under(store, uri: str) -> list[str]:
    return [o.key for o in store.list(uri)]


def copy_dataset(store, source: str, dest: str, *, per_class_train: int | None = None, drop_classes=()) -> list[str]:
    """Copy a train/val/test dataset, optionally keeping only the first n training images per class."""
    from collections import defaultdict

    kept: dict[str, int] = defaultdict(int)
    copied = []
    for obj in store.list(source):
        rel = obj.key[len(source.split("/", 3)[3]) + 1 :]
        split, label = rel.split("/")[:2]
        if label in drop_classes:
            continue
        if split == "train" and per_class_train is not None:
            if kept[label] >= per_class_train:
                continue
            kept[label] += 1
        store.put_bytes(f"{dest}/{rel}", store.get_bytes(obj.uri))
        copied.append(rel)
    return copied


def target_subset(demo, name: str, per_class_train: int) -> str:
    """The demo's digits 5–9 with only the first ``per_class_train`` training images of each class (made once)."""
    from airflow_tl.hooks.s3 import s3_store

    store = s3_store("aws_default")
    uri = f"s3://{demo.bucket}/datasets/{name}"
    if not store.list(uri):
        copy_dataset(store, demo.target_dataset, uri, per_class_train=per_class_train)
    return uri


def flatten_dataset(store, source: str, dest: str) -> list[str]:
    """A train/val/test dataset copied as ``<class>/<split>-<image>``: the flat layout that is split by key hash."""
    root_len = len(source.split("/", 3)[3]) + 1
    copied = []
    for obj in store.list(source):
        split, label, name = obj.key[root_len:].split("/")
        rel = f"{label}/{split}-{name}"
        store.copy(obj.uri, f"{dest}/{rel}")
        copied.append(rel)
    return copied


def snapshot(store, uri: str) -> dict[str, str]:
    """Every object under ``uri`` with its ETag: compare two snapshots to prove nothing was written."""
    return {o.key: o.etag for o in store.list(uri)}


HOSTILE = "<script>alert(1)</script>"  # a string from S3 that must render inert
