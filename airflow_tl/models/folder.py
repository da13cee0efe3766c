"""Model folders in S3: ``model.safetensors`` plus ``model.json``, the card written last.

A folder is a model only when its card exists and the weights hash to the card's sha256, so a
writer that dies half-way leaves something every reader rejects, never something half-read.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from airflow_tl.exceptions import InvalidModelCardError
from airflow_tl.models.architectures import build_model, head_prefixes, load_weights
from airflow_tl.models.card import ModelCard
from airflow_tl.storage.s3 import S3Store
from airflow_tl.storage.tensors import read_tensors, write_tensors
from airflow_tl.uris import S3URI, parse_s3_uri

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


def _folder(uri: str | S3URI) -> S3URI:
    return uri if isinstance(uri, S3URI) else parse_s3_uri(uri, what="Model folder URI")


def read_card(store: S3Store, uri: str | S3URI) -> ModelCard:
    """The validated card of a model folder."""
    card_uri = _folder(uri).join(CARD_FILE)
    return ModelCard.from_json(store.get_bytes(card_uri), uri=str(card_uri))


def save_model_folder(
    store: S3Store,
    uri: str | S3URI,
    state_dict: dict[str, torch.Tensor],
    card: ModelCard,
    *,
    files: dict[str, bytes] | None = None,
) -> ModelCard:
    """Write weights and ``files`` (such as the data manifest), then the card with the weights' sha256.

    Returns the card as written.
    """
    folder = _folder(uri)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    check_head_matches(tensors, card, source=str(folder))
    # An older card must not vouch for the weights while they are being replaced.
    store.delete(folder.join(CARD_FILE))
    card.weights_sha256 = write_tensors(store, folder.join(WEIGHTS_FILE), tensors, metadata={"format": "pt"})
    for name, data in sorted((files or {}).items()):
        store.put_bytes(folder.join(name), data)
    store.put_bytes(folder.join(CARD_FILE), card.to_json(), content_type="application/json")
    log.info(
        "Wrote model folder %s (%s, %d classes, sha256 %s)",
        folder,
        card.architecture,
        card.num_classes,
        card.weights_sha256[:12],
    )
    return card


def load_model_folder(store: S3Store, uri: str | S3URI) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Weights and card of a model folder, after checking the weights against the card's sha256."""
    folder = _folder(uri)
    card = read_card(store, folder)
    weights_uri = folder.join(WEIGHTS_FILE)
    state_dict = read_tensors(store, weights_uri, card.weights_sha256, name=str(weights_uri))
    check_head_matches(state_dict, card, source=str(folder))
    return state_dict, card


def check_head_matches(state_dict: dict[str, torch.Tensor], card: ModelCard, *, source: str) -> None:
    """The head's output size must equal the card's class count."""
    for prefix in card.head:
        weight = state_dict.get(f"{prefix}.weight")
        if weight is None:
            raise InvalidModelCardError(
                f"Model {source}: the card names head {prefix!r} but the weights have no {prefix}.weight."
            )
        if weight.shape[0] != card.num_classes:
            raise InvalidModelCardError(
                f"Model {source}: the card lists {card.num_classes} classes but head {prefix!r} has "
                f"{weight.shape[0]} outputs."
            )


def instantiate(card: ModelCard, state_dict: dict[str, torch.Tensor] | None, *, source: str) -> nn.Module:
    """Build the card's architecture and load the weights strictly (random init when ``state_dict`` is None)."""
    model = build_model(card.architecture, card.num_classes)
    if state_dict is not None:
        load_weights(model, card.architecture, state_dict, source=source)
    if tuple(card.head) != head_prefixes(card.architecture):
        raise InvalidModelCardError(
            f"Model {source}: the card's head {card.head} is not {list(head_prefixes(card.architecture))}, "
            f"the head of {card.architecture}."
        )
    return model
