"""Turn any pretrained source into a canonical model folder: the plain-Python core of FetchPretrainedOperator."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

import torch

from airflow_tl.exceptions import InvalidArgumentError, InvalidModelCardError, ObjectNotFoundError
from airflow_tl.models.architectures import (
    build_model,
    check_architecture,
    describe_blocks,
    head_prefixes,
    load_weights,
)
from airflow_tl.models.card import INITS, InputSpec, ModelCard
from airflow_tl.models.folder import WEIGHTS_FILE, read_card, save_model_folder
from airflow_tl.models.freezing import resolve_freeze_layers
from airflow_tl.pretrained.sources import Source, resolve_source, source_architecture
from airflow_tl.redaction import redact
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import parse_s3_uri

log = logging.getLogger(__name__)


@dataclass
class FetchSpec:
    """What to fetch and how to shape it. Validates itself; messages name the argument."""

    pretrained_uri: str | None = None
    architecture: str | None = None
    init: str = "pretrained"
    class_names: list[str] | None = None
    num_classes: int | None = None
    image_size: int | None = None
    seed: int = 0
    weights_mirror: str | None = None
    # Checked against the architecture's blocks before anything is downloaded (None: not checked). Not part of
    # what is fetched, so not of the fingerprint either: the training task reads the folder with its own value.
    freeze_layers: int | str | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise InvalidArgumentError(
                f"Argument init accepts only 'pretrained' and 'random'. Provided value: {self.init!r}."
            )
        if not self.pretrained_uri and not self.architecture:
            raise InvalidArgumentError("Give pretrained_uri, or architecture with init='random'.")
        if not self.pretrained_uri and self.init == "pretrained":
            raise InvalidArgumentError(
                f"Argument init='pretrained' needs a pretrained_uri; for architecture {self.architecture!r} alone use "
                "init='random'."
            )
        if self.class_names is not None and (
            not isinstance(self.class_names, list)
            or not self.class_names
            or not all(isinstance(c, str) and c for c in self.class_names)
            or len(set(self.class_names)) != len(self.class_names)
        ):
            raise InvalidArgumentError(
                "Argument class_names must be a list of distinct non-empty strings. "
                f"Provided value: {self.class_names!r}."
            )
        for name in ("num_classes", "image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidArgumentError(f"Argument {name} must be a positive integer. Provided value: {value!r}.")
        if self.class_names and self.num_classes and self.num_classes != len(self.class_names):
            raise InvalidArgumentError(
                f"Argument num_classes={self.num_classes} contradicts class_names, "
                f"which has {len(self.class_names)} entries."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidArgumentError(f"Argument seed must be an integer. Provided value: {self.seed!r}.")
        if self.architecture is not None:
            check_architecture(self.architecture)

    def fingerprint(self) -> str:
        """What was asked for, as a hash recorded in the card; a retry that asks the same reuses the folder.

        URIs are taken redacted: a hash over a password would let anyone with the card test guesses of it,
        and a presigned URL signed anew for the retry still names the same source.
        """
        redacted = {"pretrained_uri": redact(self.pretrained_uri), "weights_mirror": redact(self.weights_mirror)}
        spec = asdict(self) | redacted
        del spec["freeze_layers"]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class FetchResult:
    uri: str
    card: ModelCard
    reused: bool

    def summary(self) -> dict[str, Any]:
        """The small JSON that becomes the task's XCom."""
        return {
            "model_uri": self.uri,
            "architecture": self.card.architecture,
            "num_classes": self.card.num_classes,
            "blocks": [b.name for b in self.card.blocks],
            "sha256": self.card.weights_sha256,
            "init": self.card.lineage.get("init"),
            "source": self.card.lineage.get("source"),
            "reused": self.reused,
        }


def fetch_pretrained(spec: FetchSpec, *, store: S3Store, output_uri: str) -> FetchResult:
    """Resolve, verify and load the source, then write a model folder at ``output_uri``.

    Everything is checked before the first write, so bad input leaves nothing behind. A repeat with the
    same spec and output (a retried task) finds its own complete folder and reuses it.
    """
    output = parse_s3_uri(output_uri, what="Output URI")
    if spec.freeze_layers is not None:
        _check_freeze_layers(spec, store)
    reused = _completed_earlier(store, output_uri, spec)
    if reused is not None:
        log.info("Model folder %s is already complete from an earlier try; reusing it", output_uri)
        return FetchResult(output_uri, reused, True)

    source = (
        resolve_source(
            spec.pretrained_uri,
            store=store,
            architecture=spec.architecture,
            load_weights=spec.init == "pretrained",
            weights_mirror=spec.weights_mirror,
        )
        if spec.pretrained_uri
        else Source(f"torchvision://{spec.architecture}", spec.architecture, None, None, InputSpec())
    )
    if spec.architecture and spec.architecture != source.architecture:
        raise InvalidArgumentError(
            f"Argument architecture={spec.architecture!r} contradicts {source.uri}, which is a {source.architecture}."
        )
    class_names = _class_names(spec, source)
    new_head = source.state_dict is not None and class_names != _source_classes(source)

    torch.manual_seed(spec.seed)  # random init and any new head are reproducible
    model = build_model(source.architecture, len(class_names))
    if source.state_dict is not None:
        load_weights(model, source.architecture, source.state_dict, source=source.uri, skip_head=new_head)
        if new_head:
            log.info(
                "Replaced the %d-class head of %s with a new %d-class head",
                len(_source_classes(source)),
                source.uri,
                len(class_names),
            )
    card = ModelCard(
        architecture=source.architecture,
        class_names=class_names,
        input=_input_spec(source, spec.image_size),
        blocks=describe_blocks(source.architecture, model),
        head=list(head_prefixes(source.architecture)),
        lineage={
            "source": source.uri,
            "source_sha256": source.sha256,
            "init": spec.init,
            "seed": spec.seed,
            "new_head": new_head,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fetch_fingerprint": spec.fingerprint(),
            "source_lineage": source.lineage,
        },
    )
    save_model_folder(store, output, model.state_dict(), card)
    return FetchResult(output_uri, card, False)


def _check_freeze_layers(spec: FetchSpec, store: S3Store) -> None:
    """``freeze_layers`` against the blocks of the architecture the source names, so that a bad count or block name
    fails in seconds rather than after the weights arrive (training checks it again, against the card).

    The blocks come from a model built on the meta device: module structure only, no memory for weights.
    """
    architecture = (
        source_architecture(spec.pretrained_uri, store=store, architecture=spec.architecture)
        if spec.pretrained_uri
        else spec.architecture
    )
    if architecture is not None:
        resolve_freeze_layers(spec.freeze_layers, describe_blocks(architecture), architecture=architecture)


def _completed_earlier(store: S3Store, output_uri: str, spec: FetchSpec) -> ModelCard | None:
    """The card an earlier try of this task left in its own output folder, when it fetched the same thing.

    No card means no earlier result; a card that fails validation is an older format or damaged and is
    rewritten (the folder is this task's own). Any other error reading it fails the task with the URI.
    """
    try:
        card = read_card(store, output_uri)
    except ObjectNotFoundError:
        return None
    except InvalidModelCardError as err:
        log.warning("Rewriting the model folder %s: %s", output_uri, err)
        return None
    same = card.lineage.get("fetch_fingerprint") == spec.fingerprint()
    return card if same and store.exists(parse_s3_uri(output_uri).join(WEIGHTS_FILE)) else None


def _source_classes(source: Source) -> list[str]:
    if source.class_names:
        return source.class_names
    weight = source.state_dict[f"{head_prefixes(source.architecture)[0]}.weight"]  # type: ignore[index]
    return [f"class_{i}" for i in range(weight.shape[0])]


def _class_names(spec: FetchSpec, source: Source) -> list[str]:
    if spec.class_names:
        return list(spec.class_names)
    if spec.num_classes:
        existing = source.class_names if source.class_names and len(source.class_names) == spec.num_classes else None
        return existing or [f"class_{i}" for i in range(spec.num_classes)]
    if source.class_names or source.state_dict is not None:
        return _source_classes(source)
    raise InvalidArgumentError(
        f"{source.uri} does not say how many classes to build a head for: pass class_names or num_classes."
    )


def _input_spec(source: Source, image_size: int | None) -> InputSpec:
    if image_size is None:
        return source.input
    # Keep the source's resize-to-crop ratio (torchvision's presets resize 256 then crop 224).
    ratio = source.input.resize_size / source.input.crop_size
    return replace(source.input, crop_size=image_size, resize_size=max(image_size, round(image_size * ratio)))
