"""Resolving a pretrained source to weights plus what the card needs to know about them.

Three sources (DESIGN.md): an ``s3://`` model folder, ``torchvision://<arch>/<WEIGHTS>`` and an
``http(s)://`` URL named ``<name>-<sha256 prefix>.pth`` or pinned by ``#sha256=<64 hex>``. A source's hash is
always checked and its weights are loaded without unpickling anything. A Source names its origin redacted:
credentials in a URL are used for the download and go no further.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from airflow_tl.exceptions import InvalidArgumentError, InvalidURIError
from airflow_tl.models.architectures import check_architecture, list_architectures
from airflow_tl.models.card import InputSpec
from airflow_tl.models.folder import load_model_folder, read_card
from airflow_tl.pretrained.checkpoint import load_checkpoint
from airflow_tl.pretrained.download import check_sha256, download
from airflow_tl.redaction import redact
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_hub_url, parse_s3_uri, parse_torchvision_uri, source_kind

log = logging.getLogger(__name__)

TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
# torchvision builds these with transform_input=True for their ImageNet weights (ported from TensorFlow, trained on
# inputs in [-1, 1]), turning input normalised by the weights' preset into (x - 0.5) / 0.5. We build them as for any
# other weights, without it, so the card normalises that way itself: the same numbers reach the first convolution.
TF_NORMALISED = ("googlenet", "inception_v3")


@dataclass
class Source:
    """What a pretrained URI resolved to. ``state_dict`` is None when only the architecture was wanted."""

    uri: str  # redacted: safe for logs, messages and the card
    architecture: str
    state_dict: dict[str, torch.Tensor] | None
    class_names: list[str] | None
    input: InputSpec
    sha256: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)


def resolve_source(
    uri: str,
    *,
    store: S3Store,
    architecture: str | None = None,
    load_weights: bool = True,
    weights_mirror: str | None = None,
) -> Source:
    """Read a pretrained source. With ``load_weights=False`` nothing but metadata is read (for random init)."""
    kind = source_kind(uri)
    if kind == "s3":
        return _from_s3(uri, store, load_weights)
    if kind == "torchvision":
        return _from_torchvision(uri, load_weights, weights_mirror)
    return _from_hub(uri, architecture, load_weights)


def source_architecture(uri: str, *, store: S3Store, architecture: str | None = None) -> str | None:
    """The architecture a source names, learned without reading its weights: a torchvision URI's, an ``s3://``
    folder's card, or for a hub URL ``architecture`` or its file name. None when the name is not one: resolve_source
    then refuses the URL, before downloading it too."""
    kind = source_kind(uri)
    if kind == "s3":
        return read_card(store, parse_s3_uri(uri, what="Pretrained URI")).architecture
    if kind == "torchvision":
        name = parse_torchvision_uri(uri).architecture
    else:
        name = _hub_architecture(uri, architecture)
    if name is not None:
        check_architecture(name)
    return name


def _from_s3(uri: str, store: S3Store, load_weights: bool) -> Source:
    parse_s3_uri(uri, what="Pretrained URI")
    if load_weights:
        state_dict, card = load_model_folder(store, uri)
    else:
        state_dict, card = None, read_card(store, uri)
    return Source(uri, card.architecture, state_dict, card.class_names, card.input, card.weights_sha256, card.lineage)


def _from_torchvision(uri: str, load_weights: bool, weights_mirror: str | None) -> Source:
    import torchvision

    parsed = parse_torchvision_uri(uri)
    check_architecture(parsed.architecture)
    if parsed.weights is None:
        return Source(uri, parsed.architecture, None, None, InputSpec())
    catalogue = torchvision.models.get_model_weights(parsed.architecture)
    if parsed.weights not in catalogue.__members__:
        raise InvalidURIError(
            f"Pretrained URI {redact(uri)!r}: torchvision has no weights {parsed.weights!r} for {parsed.architecture}. "
            f"Available: {', '.join(catalogue.__members__)}."
        )
    weights = catalogue[parsed.weights]
    preset = weights.transforms()
    spec = InputSpec(
        crop_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        mean=list(preset.mean),
        std=list(preset.std),
        interpolation=preset.interpolation.value,
    )
    if parsed.architecture in TF_NORMALISED:
        spec = replace(spec, mean=[0.5] * 3, std=[0.5] * 3)
    url = _mirrored(weights.url, weights_mirror) if weights_mirror else weights.url
    state_dict, sha = _download_hub_file(url) if load_weights else (None, None)
    lineage = {"torchvision_weights": f"{parsed.architecture}.{weights.name}", "url": redact(url)}
    return Source(uri, parsed.architecture, state_dict, list(weights.meta["categories"]), spec, sha, lineage)


def _mirrored(url: str, mirror: str) -> str:
    """The mirror's URL for torchvision's file: its name appended to the mirror's path, its query kept."""
    parts = urlsplit(mirror)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + url.rsplit("/", 1)[-1]))


def _from_hub(uri: str, architecture: str | None, load_weights: bool) -> Source:
    arch = _hub_architecture(uri, architecture)
    if arch is None:
        raise InvalidArgumentError(
            f"Cannot tell the architecture of {redact(uri)}: its name {parse_hub_url(uri).name!r} is not a torchvision "
            "architecture. Pass architecture=<torchvision model name>."
        )
    check_architecture(arch)
    state_dict, sha = _download_hub_file(uri) if load_weights else (None, None)
    return Source(redact(uri), arch, state_dict, None, InputSpec(), sha, {"url": redact(uri)})


def _hub_architecture(uri: str, architecture: str | None) -> str | None:
    name = parse_hub_url(uri).name
    return architecture or (name if name in list_architectures() else None)


def _download_hub_file(url: str) -> tuple[dict[str, torch.Tensor], str]:
    hub = parse_hub_url(url)
    with _temporary_file(hub.filename) as (path, fh):
        sha = download(url, fh)
        fh.close()
        check_sha256(sha, hub)
        return load_checkpoint(path, source=redact(url)), sha


@contextmanager
def _temporary_file(name: str) -> Iterator[tuple[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="airflow-tl-") as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            yield path, fh
