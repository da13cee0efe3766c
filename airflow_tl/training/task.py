"""One training job, start to finish: the plain-Python core of FreezeAndTrainOperator.

Two paths. With a features URI and ``freeze_layers="all"`` only a new linear head is fitted, on cached
features, to convergence (``training.head``: L-BFGS, L2 penalty chosen on the validation split): the
backbone is never built or run, and the epoch loop's settings (``epochs``, ``learning_rate``, ...) do not
apply. Otherwise images are streamed from S3 through the network with its first ``freeze_layers`` blocks
frozen, in the epoch loop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from airflow_tl.data.dataset import class_mapping, list_dataset
from airflow_tl.data.loader import ImageStream
from airflow_tl.data.manifest import MANIFEST_FILE, read_manifest
from airflow_tl.devices import Placement, cpu, placement, placement_for
from airflow_tl.exceptions import IncompatibleWeightsError, InvalidArgumentError
from airflow_tl.features.backbone import head_state
from airflow_tl.features.extract import load_split, read_features_index
from airflow_tl.models.architectures import build_model, load_weights, skeleton
from airflow_tl.models.card import ModelCard
from airflow_tl.models.folder import load_model_folder, read_card, save_model_folder
from airflow_tl.models.freezing import freeze_first, resolve_freeze_layers, without_autograd
from airflow_tl.storage.s3 import S3Store
from airflow_tl.training.checkpoint import CheckpointStore
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.distributed import SOLO, World
from airflow_tl.training.engine import FitResult, fit
from airflow_tl.training.head import HeadFit, fit_linear_head
from airflow_tl.training.launch import Job, Nodes, errors_folder, launch
from airflow_tl.training.lp_ft import linear_probe_head
from airflow_tl.training.sources import ImageBatches

log = logging.getLogger(__name__)

# The TrainConfig fields a head fitted on features uses (and its card records).
HEAD_CONFIG = ("seed", "freeze_layers", "init")


@dataclass
class TrainResult:
    model_uri: str
    card: ModelCard
    fit: FitResult
    trainable_params: int
    total_params: int
    skipped_corrupt: int = 0
    head: HeadFit | None = None  # set when a head was fitted on features, without epochs

    def summary(self) -> dict[str, Any]:
        head = self.head
        return {
            "model_uri": self.model_uri,
            # A head fitted on features has no epochs: its one fit over all of them counts as one.
            "epochs_run": 1 if head else len(self.fit.history),
            "best_epoch": self.fit.best_epoch,
            "val_loss": self.fit.best["val_loss"],
            "val_accuracy": self.fit.best["val_accuracy"],
            "stopped_early": self.fit.stopped_early,
            "resumed_from_epoch": self.fit.resumed_from,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "train_seconds": round(self.fit.seconds, 1),
            "freeze_layers": self.card.training["freeze_layers"] if self.card.training else None,
            "skipped_corrupt": self.skipped_corrupt,
            "method": head.method if head else self.card.training.get("optimizer"),
            "l2": head.l2 if head else None,
            "iterations": head.iterations if head else None,
        }


def train(
    store: S3Store,
    *,
    model_uri: str,
    config: TrainConfig,
    output_uri: str,
    checkpoint_uri: str | None,
    dataset_uri: str | None = None,
    features_uri: str | None = None,
    reset_head: bool | str = "auto",
    skip_corrupt: bool = False,
    threads: int = 8,
    cache_bytes: int = 512 * 2**20,
    layout: str = "auto",
    device: str = "auto",
    num_processes: int = 1,
    nodes: Nodes | None = None,
    worker_store: Callable[[], S3Store] | None = None,
) -> TrainResult:
    """Train ``model_uri`` on a dataset (or on cached features) into a model folder at ``output_uri``.

    The folder also holds the data manifest: which images (key, ETag) were trained, validated and held out
    for testing, so the gate can later compare models only on images neither has seen. ``device`` is where
    the network runs (``airflow_tl.devices``); the card records it under ``training.device``.

    ``num_processes`` > 1, or ``nodes`` of several machines: data-parallel training under ``torch.distributed``
    (``training.launch``), each process on its slice of every batch; ``worker_store`` is how each builds its
    S3 client (``hooks.s3.worker_store_factory``). Rank 0 alone writes checkpoints and the model folder.
    """
    nodes = nodes or Nodes()
    _positive("num_processes", num_processes)
    processes = num_processes * nodes.count
    # First: a machine without the GPU(s) asked for fails before reading anything.
    place = placement_for(device, num_processes) if processes > 1 and not features_uri else placement(device)
    if reset_head not in ("auto", True, False):
        raise InvalidArgumentError(
            f"Argument reset_head accepts only 'auto', True and False. Provided value: {reset_head!r}."
        )
    if features_uri:
        if config.freeze_layers != "all":
            raise InvalidArgumentError(
                f"A features_uri trains the head alone, which needs freeze_layers='all'; got {config.freeze_layers!r}."
            )
        # No checkpoints: the fit takes seconds, and a retry refits the same head from the cached features.
        # The head's L-BFGS fit runs on the CPU: a few thousand feature rows gain nothing from a GPU.
        if processes > 1:
            log.info("num_processes does not apply to a head fitted on cached features: one process fits it")
        return _train_head_on_features(store, model_uri, features_uri, config, output_uri)
    if not dataset_uri:
        raise InvalidArgumentError("Give dataset_uri (images) or, with freeze_layers='all', features_uri.")
    # Listed once, here: every process of a distributed run trains on this very listing, in the same order.
    dataset = list_dataset(store, dataset_uri, seed=config.seed, layout=layout)
    args = {
        "model_uri": model_uri, "dataset": dataset, "config": config, "output_uri": output_uri,
        "checkpoint_uri": checkpoint_uri, "reset_head": reset_head, "skip_corrupt": skip_corrupt,
        "threads": threads, "cache_bytes": cache_bytes,
    }  # fmt: skip
    if processes == 1:
        return _train_on_images(store, place=place, **args)
    _check_shardable(dataset, config, processes, num_processes, nodes)
    if worker_store is None:
        raise InvalidArgumentError("num_processes > 1 needs worker_store: how each process builds its S3 client.")
    backend = "nccl" if place.is_cuda else "gloo"
    # Several processes here: each on its own GPU by local rank. One per node: the very device asked for.
    device = str(place.device) if num_processes == 1 else "cuda" if place.is_cuda else "cpu"
    with errors_folder() as errors:
        job = Job(_train_rank, args | {"device": device}, worker_store, backend=backend, errors=errors)
        results = launch(job, num_processes=num_processes, nodes=nodes)
    return results[min(results)]


def _train_rank(*, world: World, store: S3Store, device: str, **args) -> TrainResult:
    """One process of a distributed run: its GPU (by local rank) or the CPU, and its share of the work."""
    place = placement(f"cuda:{world.local_rank}" if device == "cuda" else device)
    return _train_on_images(store, place=place, world=world, **args)


def _check_shardable(dataset, config: TrainConfig, processes: int, num_processes: int, nodes: Nodes) -> None:
    """Every process must get images of every epoch: at most one per image of a batch, and of the split; from a
    sharded dataset, at most one per training shard."""
    images = len(dataset.split("train"))
    most = min(config.batch_size, images)
    if processes > most:
        where = f"num_processes={num_processes}" + (f" on each of {nodes.count} nodes" if nodes.count > 1 else "")
        raise InvalidArgumentError(
            f"{where} makes {processes} processes, but dataset {dataset.uri} can be shared among at most {most}: "
            f"each takes a slice of every batch of batch_size={config.batch_size} from {images} training images. "
            "Use fewer processes, or a larger batch_size."
        )
    shards = len({item.shard for item in dataset.split("train")}) if dataset.shards is not None else processes
    if processes > shards:
        raise InvalidArgumentError(
            f"{processes} processes would read the {shards} training shards of {dataset.uri}, one shard each at "
            "least: some would have no images. Use fewer processes, or prepare smaller shards (shard_images)."
        )


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"Argument {name} must be a positive integer. Provided value: {value!r}.")


def _train_on_images(
    store, *, model_uri, dataset, config, output_uri, checkpoint_uri, reset_head, skip_corrupt, threads, cache_bytes,
    place: Placement, world: World = SOLO,
) -> TrainResult:  # fmt: skip
    checkpoints = CheckpointStore(store, checkpoint_uri) if checkpoint_uri else None
    if config.init == "pretrained":
        state_dict, card = load_model_folder(store, model_uri)
    else:
        state_dict, card = None, read_card(store, model_uri)
    new_head = reset_head is True or (reset_head == "auto" and dataset.class_names != card.class_names)
    classes = class_mapping(dataset, card.class_names, new_head=new_head, model_uri=model_uri)
    k = resolve_freeze_layers(config.freeze_layers, card.blocks, architecture=card.architecture)

    torch.manual_seed(config.seed)
    model = build_model(card.architecture, len(classes))
    if state_dict is not None:
        load_weights(model, card.architecture, state_dict, source=model_uri, skip_head=new_head)
    if new_head:
        log.info("Training a new %d-class head (%s) in place of %s's", len(classes), ", ".join(classes), model_uri)
    stream = ImageStream(
        store,
        dataset,
        card.input,
        batch_size=config.batch_size,
        threads=threads,
        skip_corrupt=skip_corrupt,
        cache_bytes=cache_bytes,
    )
    place.model(model)
    probe = _linear_probe_first(model, card, config, stream, classes, new_head, place)
    frozen = freeze_first(model, card.blocks, k)
    without_autograd(model, frozen)
    trainable, total = _count(model)
    log.info(
        "Training %s (init=%s) with %d of %d blocks frozen: %s of %s parameters trainable",
        card.architecture, config.init, k, len(card.blocks), f"{trainable:,}", f"{total:,}",
    )  # fmt: skip
    source = ImageBatches(stream, seed=config.seed, augment=config.augment, shard=world.shard())
    fingerprint = config.fingerprint(model=card.weights_sha256, data=dataset.fingerprint(), classes=classes)
    result = fit(
        model,
        source,
        config,
        blocks=card.blocks,
        head=card.head,
        frozen=frozen,
        checkpoints=checkpoints,
        fingerprint=fingerprint,
        place=place,
        world=world,
    )
    lineage = {"dataset_uri": dataset.uri, "dataset_fingerprint": dataset.fingerprint(), "new_head": new_head}
    training = {
        **config.to_dict(),
        "frozen_blocks": [b.name for b in card.blocks[:k]],
        "trainable_params": trainable,
        "total_params": total,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "train_seconds": round(result.seconds, 1),
        "device": place.describe(),
        **({"processes": world.size} if world.distributed else {}),
        **({"linear_probe": probe} if probe else {}),
    }
    skipped = int(world.all_sum(torch.tensor(len(stream.skipped), device=place.device)).item())
    out = _write(
        store, output_uri, model.state_dict(), card, classes, training, result, model_uri, lineage,
        dataset.manifest().to_bytes(), save=world.main,
    )  # fmt: skip
    world.barrier()  # every process ends once the folder is written, or fails with rank 0
    return TrainResult(output_uri, out, result, trainable, total, skipped)


def _train_head_on_features(store, model_uri, features_uri, config, output_uri) -> TrainResult:
    card = read_card(store, model_uri)
    index = read_features_index(store, features_uri)
    if index["weights_sha256"] != card.weights_sha256 or index["architecture"] != card.architecture:
        raise IncompatibleWeightsError(
            f"Features {features_uri} were extracted with {index['model_uri']} ({index['architecture']}, sha256 "
            f"{index['weights_sha256'][:12]}), not with {model_uri} "
            f"({card.architecture}, sha256 {card.weights_sha256[:12]})."
        )
    train_split, val_split = (
        load_split(store, features_uri, index, "train"),
        load_split(store, features_uri, index, "val"),
    )
    classes = index["class_names"]
    log.info(
        "Fitting a %d-class linear head on %d cached %d-dim features from %s; the backbone is not loaded, and "
        "epochs, batch_size, learning_rate and patience do not apply",
        len(classes), len(train_split[1]), index["feature_dim"], features_uri,
    )  # fmt: skip
    head = fit_linear_head(train_split, val_split, num_classes=len(classes), seed=config.seed, class_names=classes)
    # The backbone's tensors are copied as they are (sha256-checked on read); only the head's entries change.
    weights, current = load_model_folder(store, model_uri)
    if current.weights_sha256 != card.weights_sha256:
        raise IncompatibleWeightsError(f"{model_uri} changed while training: its weights no longer match its card.")
    weights |= head_state(card.architecture, head.weight, head.bias)  # SqueezeNet's: a 1x1 convolution
    total = _count(skeleton(card.architecture, len(classes)))[1]
    trainable = head.weight.numel() + head.bias.numel()
    lineage = {
        "features_uri": features_uri,
        "dataset_uri": index["dataset_uri"],
        "dataset_fingerprint": index["dataset_fingerprint"],
        "new_head": True,
    }
    training = {
        # Of the config, only what the fit used; the epoch loop's settings are left out rather than recorded
        # as if they had shaped the head.
        **{key: getattr(config, key) for key in HEAD_CONFIG},
        **head.to_training(),
        "frozen_blocks": [b.name for b in card.blocks],
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds": round(head.seconds, 1),
        "device": cpu().describe(),
    }
    result = _as_fit_result(head)
    # The features' manifest, checked against their index; it serialises to the very bytes it was read from.
    manifest = read_manifest(store, features_uri, sha256=index["data_manifest_sha256"]).to_bytes()
    out = _write(store, output_uri, weights, card, classes, training, result, model_uri, lineage, manifest)
    return TrainResult(output_uri, out, result, trainable, total, len(index.get("skipped_corrupt", [])), head)


def _linear_probe_first(model, card, config, stream, classes, new_head, place: Placement) -> dict | None:
    """LP-FT's first stage when ``config.lp_ft`` asks for it: the new head fitted on frozen features, in place."""
    if not config.lp_ft:
        return None
    if config.init != "pretrained":
        raise InvalidArgumentError("lp_ft probes pretrained features; with init='random' there are none to probe.")
    if not new_head:
        log.info("lp_ft: the model keeps its trained head (same classes), so there is no new head to probe first")
        return None
    return linear_probe_head(
        model, card.architecture, stream, num_classes=len(classes), seed=config.seed, class_names=classes, place=place
    )


def _as_fit_result(head: HeadFit) -> FitResult:
    """The head's fit in the epoch loop's terms, for what reads both.

    One fit counts as one epoch, and the history is the regularisation path.
    """
    best = {"val_loss": head.val_loss, "val_accuracy": head.val_accuracy}
    return FitResult(
        head.to_history(), best_epoch=1, resumed_from=None, stopped_early=False, seconds=head.seconds, best=best
    )


def _write(store, output_uri, weights, parent, classes, training, result, model_uri, lineage, manifest, save=True):
    card = ModelCard(
        architecture=parent.architecture,
        class_names=list(classes),
        input=parent.input,
        blocks=parent.blocks,
        head=parent.head,
        lineage={
            "parent": model_uri,
            "parent_sha256": parent.weights_sha256,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **lineage,
            "data_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        },
        training=training,
        history=result.history,
        metrics={"val_loss": result.best["val_loss"], "val_accuracy": result.best["val_accuracy"]},
    )
    if not save:  # a distributed run's other ranks: the card rank 0 writes, for their summary
        return card
    return save_model_folder(store, output_uri, weights, card, files={MANIFEST_FILE: manifest})


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
