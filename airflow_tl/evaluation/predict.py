"""A model's class probabilities over one split of an image dataset, labels in the model's class order."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from airflow_tl.data.dataset import DatasetError, ImageDataset
from airflow_tl.data.loader import ImageStream
from airflow_tl.devices import Placement, cpu
from airflow_tl.models.folder import instantiate, load_model_folder
from airflow_tl.storage.s3 import S3Store

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    probs: torch.Tensor  # (N, C) softmax, C = the model's classes
    labels: torch.Tensor  # (N,) indices into class_names
    keys: list[str]  # (N,) the images, in row order
    class_names: list[str]
    skipped_corrupt: list[str]

    def only(self, keys: set[str]) -> Predictions:
        """The rows of ``keys`` (in this prediction's order)."""
        rows = [i for i, key in enumerate(self.keys) if key in keys]
        index = torch.tensor(rows, dtype=torch.long)
        return Predictions(
            self.probs[index], self.labels[index], [self.keys[i] for i in rows], self.class_names, self.skipped_corrupt
        )


def unknown_classes(dataset: ImageDataset, split: str, model_classes: list[str]) -> list[str]:
    """Classes with images in ``split`` that the model cannot predict."""
    present = {dataset.class_names[item.label] for item in dataset.split(split)}
    return sorted(present - set(model_classes))


def predict(
    store: S3Store,
    model_uri: str,
    dataset: ImageDataset,
    *,
    split: str = "test",
    batch_size: int = 64,
    threads: int = 8,
    skip_corrupt: bool = False,
    place: Placement | None = None,
) -> Predictions:
    """Run the model (eval mode, no autograd) over every image of ``split``, on ``place`` (default the CPU)."""
    place = place or cpu()
    if not dataset.split(split):
        raise DatasetError(
            f"Dataset {dataset.uri} has no {split} images; add a {split}/ folder or more images per class."
        )
    state_dict, card = load_model_folder(store, model_uri)
    unknown = unknown_classes(dataset, split, card.class_names)
    if unknown:
        raise DatasetError(
            f"The {split} split of {dataset.uri} has classes that model {model_uri} does not know: "
            f"{', '.join(unknown)}. The model predicts {', '.join(card.class_names)}."
        )
    model = place.model(instantiate(card, state_dict, source=model_uri).eval())
    # Dataset labels index the dataset's sorted classes; the metrics need the model's order.
    to_model = torch.tensor([card.class_names.index(c) if c in card.class_names else -1 for c in dataset.class_names])
    stream = ImageStream(store, dataset, card.input, batch_size=batch_size, threads=threads, skip_corrupt=skip_corrupt)
    probs, labels, keys = [], [], []
    with torch.inference_mode():
        for batch in stream.batches(split):
            with place.autocast():
                logits = model(*place.batch(batch.x))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(to_model[batch.y])
            keys += batch.keys
    if not probs:
        raise DatasetError(f"Every {split} image of {dataset.uri} was skipped as corrupt; nothing to evaluate.")
    log.info("Predicted %d %s images of %s with %s", sum(len(y) for y in labels), split, dataset.uri, model_uri)
    return Predictions(torch.cat(probs), torch.cat(labels), keys, list(card.class_names), sorted(stream.skipped))
