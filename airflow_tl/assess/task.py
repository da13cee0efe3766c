"""One assessment, start to finish: the plain-Python core of AssessTransferOperator.

List the dataset, take a bounded, seeded sample of its training split, get the frozen network's features of
it (from the content-keyed feature cache when they are there), measure LogME, LEEP and a linear probe, and
place the dataset in the 2x2 matrix. ``advice.json`` records every number the advice rests on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

import torch

from airflow_tl.assess.advice import Advice, Thresholds, advise, similarity_axis, size_axis
from airflow_tl.assess.probe import probe_accuracy, skill
from airflow_tl.assess.scores import leep, leep_relative, logme, logme_baseline
from airflow_tl.data.dataset import DatasetError, ImageDataset, list_dataset
from airflow_tl.devices import placement
from airflow_tl.exceptions import InvalidArgumentError
from airflow_tl.features.extract import cache_key, extract_features, load_split, read_cached_index
from airflow_tl.models.architectures import head_prefixes
from airflow_tl.models.card import ModelCard
from airflow_tl.models.folder import load_model_folder, read_card
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)

ADVICE_FILE = "advice.json"
MIN_IMAGES_PER_CLASS = 2  # LogME and the probe need two images of a class: one to fit, one to judge


@dataclass
class Sample:
    features: torch.Tensor
    labels: torch.Tensor
    cache: str  # "full dataset cache", "sample cache" or "computed"
    features_uri: str
    forward_passes: int


def assess(
    store: S3Store,
    *,
    model_uri: str,
    dataset_uri: str,
    features_root: str,
    seed: int = 0,
    layout: str = "auto",
    max_images: int = 2000,
    batch_size: int = 64,
    threads: int = 8,
    skip_corrupt: bool = False,
    thresholds: Thresholds | None = None,
    output_uri: str | None = None,
    device: str = "auto",
) -> Advice:
    """Advise which strategy fits ``dataset_uri`` with ``model_uri``; write ``advice.json`` under ``output_uri``."""
    if not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1:
        raise InvalidArgumentError(f"Argument max_images must be a positive integer. Provided value: {max_images!r}.")
    thresholds = thresholds or Thresholds.from_settings()
    place = placement(device)
    started = time.monotonic()
    dataset = list_dataset(store, dataset_uri, seed=seed, layout=layout)
    train_counts = _train_counts(dataset)
    card = read_card(store, model_uri)
    # Read at most once, and only when needed: by a forward pass on a cache miss, and by LEEP for the head.
    folder = functools.cache(lambda: load_model_folder(store, model_uri))
    sample = _sample_features(
        store, card, folder, model_uri, dataset, train_counts, features_root, max_images, seed, batch_size,
        threads, skip_corrupt, place,
    )  # fmt: skip
    scores, notes = _scores(card, folder, model_uri, sample, dataset.class_names, seed)
    size = size_axis(train_counts, thresholds)
    similarity = similarity_axis(scores, thresholds, notes)
    quadrant, strategy, reason = advise(size, similarity, thresholds)
    advice = Advice(
        size,
        similarity,
        quadrant,
        strategy,
        reason,
        sample={
            "dataset_uri": dataset.uri,
            "model_uri": model_uri,
            "images": len(sample.labels),
            "train_images": sum(train_counts.values()),
            "max_images": max_images,
            "seed": seed,
            "features": sample.cache,
            "features_uri": sample.features_uri,
            "forward_passes": sample.forward_passes,
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    log.info("Advice for %s: %s (%s). %s", dataset.uri, strategy, quadrant, reason)
    if output_uri:
        uri = f"{output_uri.rstrip('/')}/{ADVICE_FILE}"
        store.put_bytes(uri, json.dumps(advice.to_dict(), indent=2).encode(), content_type="application/json")
        log.info("Advice written to %s", uri)
    return advice


def _train_counts(dataset: ImageDataset) -> dict[str, int]:
    """Training images per class, or an error naming every class too small to assess."""
    counts = Counter(item.label for item in dataset.split("train"))
    per_class = {name: counts[index] for index, name in enumerate(dataset.class_names)}
    small = {name: n for name, n in per_class.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        listed = ", ".join(f"{name!r} ({n})" for name, n in sorted(small.items()))
        raise DatasetError(
            f"Dataset {dataset.uri} is too small to assess: classes need at least {MIN_IMAGES_PER_CLASS} training "
            f"images each, and these have fewer: {listed}."
        )
    return per_class


def sample_keys(dataset: ImageDataset, max_images: int, seed: int) -> set[str]:
    """At most ``max_images`` training keys, each class in proportion to its size but never below two.

    Within a class, keys are taken in the order of a seeded hash, so the sample is stable while images are added.
    """
    by_class: dict[int, list[str]] = {}
    for item in dataset.split("train"):
        by_class.setdefault(item.label, []).append(item.key)
    total = sum(len(keys) for keys in by_class.values())
    if total <= max_images:
        return {key for keys in by_class.values() for key in keys}
    if MIN_IMAGES_PER_CLASS * len(by_class) > max_images:
        raise InvalidArgumentError(
            f"Argument max_images={max_images} cannot sample {MIN_IMAGES_PER_CLASS} images of each of the "
            f"{len(by_class)} classes of {dataset.uri}; raise it to at least {MIN_IMAGES_PER_CLASS * len(by_class)}."
        )
    chosen: set[str] = set()
    for keys in by_class.values():
        share = max(MIN_IMAGES_PER_CLASS, int(max_images * len(keys) / total))
        chosen.update(sorted(keys, key=lambda k: _rank(seed, k))[:share])
    # Rounding up small classes can overshoot; drop the highest-ranked extras of the largest classes.
    overshoot = sorted(chosen, key=lambda k: _rank(seed, k), reverse=True)
    while len(chosen) > max_images:
        chosen.discard(overshoot.pop(0))
    return chosen


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _sample_features(
    store, card, folder, model_uri, dataset, train_counts, features_root, max_images, seed, batch_size, threads,
    skip_corrupt, place,
) -> Sample:  # fmt: skip
    root = parse_s3_uri(features_root, what="features_root")
    full = str(root.join(cache_key(card, dataset, skip_corrupt=skip_corrupt)))
    index = read_cached_index(store, full)
    if index is not None:
        x, y = load_split(store, full, index, "train")
        rows = _sample_rows(y, max_images, seed)
        log.info("Using %d of the %d cached training features in %s; no forward pass", len(rows), len(y), full)
        return Sample(x[rows], y[rows], "full dataset cache", full, 0)
    keys = sample_keys(dataset, max_images, seed)
    log.info(
        "Sampling %d of %d training images of %s (seed %d) through %s",
        len(keys), sum(train_counts.values()), dataset.uri, seed, model_uri,
    )  # fmt: skip
    result = extract_features(
        store, model_uri=model_uri, dataset=dataset.only(keys), features_root=features_root,
        batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt, model_folder=folder(),
        place=place,
    )  # fmt: skip
    index = read_cached_index(store, result.uri)
    x, y = load_split(store, result.uri, index, "train")
    return Sample(x, y, "sample cache" if result.cache_hit else "computed", result.uri, result.forward_passes)


def _sample_rows(labels: torch.Tensor, max_images: int, seed: int) -> torch.Tensor:
    """Seeded, class-proportional rows of cached features, at most ``max_images`` (every row when it fits)."""
    if len(labels) <= max_images:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == label).flatten()
        share = max(MIN_IMAGES_PER_CLASS, int(max_images * len(members) / len(labels)))
        rows.append(members[torch.randperm(len(members), generator=generator)[:share]])
    return torch.cat(rows).sort().values[:max_images]


def _scores(card: ModelCard, folder, model_uri: str, sample: Sample, class_names: list[str], seed: int):
    """Every similarity score that can be measured, and notes on those that could not."""
    x, y = sample.features.double(), sample.labels
    counts = torch.bincount(y, minlength=len(class_names)).tolist()
    short = [f"{name!r} ({n})" for name, n in zip(class_names, counts, strict=True) if n < MIN_IMAGES_PER_CLASS]
    if short:
        raise DatasetError(
            f"The sample in {sample.features_uri} has fewer than {MIN_IMAGES_PER_CLASS} readable images of "
            f"{', '.join(short)}: images that could not be decoded were skipped. Fix or remove them (see the task "
            "log) and assess again."
        )
    num_classes = len(class_names)
    started = time.monotonic()
    scores: dict[str, float | None] = {"logme": logme(x, y, num_classes)}
    scores["logme_gain"] = scores["logme"] - logme_baseline(y, num_classes)
    scores["probe_accuracy"] = probe_accuracy(sample.features, y, num_classes, seed=seed)
    scores["probe_skill"] = skill(scores["probe_accuracy"], num_classes)
    notes = []
    source_head, why_not = _source_head(card, folder, model_uri, x.shape[1])
    if source_head is None:
        scores["leep"] = scores["leep_relative"] = None
        notes.append(f"LEEP skipped: {why_not}")
        log.warning("LEEP skipped: %s", why_not)
    else:
        weight, bias = source_head
        probs = torch.softmax(x @ weight.T + bias, dim=1)
        scores["leep"] = leep(probs, y, num_classes)
        scores["leep_relative"] = leep_relative(probs, y, num_classes)
    log.info(
        "Scores on %d images (%.1fs): %s",
        len(y), time.monotonic() - started,
        ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if v is not None),
    )  # fmt: skip
    return scores, notes


def _source_head(card: ModelCard, folder, model_uri: str, dim: int):
    """The source model's own classifier over its own labels, as (weight, bias), or (None, why not)."""
    # A fetch with init='random' records that and nothing else; a model pretrained from random weights (the
    # demo's source) says init='random' too, but carries the history of its training.
    if card.lineage.get("init") == "random" and not card.history:
        return None, f"{model_uri} has random weights (init='random'), so its head predicts nothing yet"
    if card.lineage.get("new_head"):
        return None, f"{model_uri}'s head was replaced by a new, untrained one when it was fetched"
    prefixes = head_prefixes(card.architecture)
    if len(prefixes) != 1:
        return None, f"{card.architecture}'s head is {list(prefixes)}, not a single linear layer on the features"
    weights, _ = folder()
    weight, bias = weights.get(f"{prefixes[0]}.weight"), weights.get(f"{prefixes[0]}.bias")
    if weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1):
        weight = weight.flatten(1)  # SqueezeNet's 1x1 convolution: a linear head over the pooled features
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] != dim:
        return None, f"{model_uri}'s head {prefixes[0]} is not a linear layer over the {dim} features"
    return (weight.double(), bias.double()), None
