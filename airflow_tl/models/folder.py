"""Model folders in S3: ``model.safetensors`` plus ``model.json``, the card written last.

A folder is a model only when its card exists and the weights hash to the card's sha256, so a
writer that dies half-way leaves something every reader rejects, never something half-read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from airflow_tl.exceptions import IntegrityError, InvalidModelCardError
from airflow_tl.models.architectures import build_model, head_prefixes, load_weights
from airflow_tl.models.card import ModelCard
from airflow_tl.storage.s3 import S3Store
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
    fd, path = tempfile.mkstemp(prefix="airflow-tl-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, path, metadata={"format": "pt"})
        card.weights_sha256 = _sha256_file(path)
        # An older card must not vouch for the weights while they are being replaced.
        store.delete(folder.join(CARD_FILE))
        store.upload_file(path, folder.join(WEIGHTS_FILE))
    finally:
        os.unlink(path)
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
    with store.downloaded(weights_uri) as (path, sha):
        if sha != card.weights_sha256:
            raise IntegrityError(
                f"sha256 mismatch for {weights_uri}: the card says {card.weights_sha256}, the file hashes to {sha}. "
                "The folder is incomplete or was modified after it was written."
            )
        try:
            state_dict = load_file(path, device="cpu")
        except SafetensorError as err:
            raise IntegrityError(f"{weights_uri} is not a valid safetensors file: {err}.") from err
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


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
