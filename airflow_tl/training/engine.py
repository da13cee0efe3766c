"""The epoch loop: train, validate, checkpoint, stop early, resume after a retry, refuse to diverge."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from airflow_tl.devices import Placement, cpu
from airflow_tl.exceptions import PermanentError
from airflow_tl.models.card import Block
from airflow_tl.models.freezing import train_mode
from airflow_tl.training.checkpoint import CheckpointStore, TrainingState, python_rng_state, restore_python_rng
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.distributed import SOLO, World, sync_batchnorm
from airflow_tl.training.optim import build_optimizer, cosine_with_warmup, param_groups

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Steps between two reads of the running loss on a GPU: each read stalls the host until the GPU catches up.
SYNC_EVERY = 25


class TrainingDivergedError(PermanentError):
    """The loss stopped being a finite number; seeded training would diverge again on a retry."""


class BatchSource(Protocol):
    """Where training and validation batches come from: images streamed from S3, or cached features."""

    train_size: int

    def train_batches(self, epoch: int) -> Batches: ...

    def val_batches(self) -> Batches: ...


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    resumed_from: int | None
    stopped_early: bool
    seconds: float
    best: dict[str, Any] = field(default_factory=dict)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Batches,
    *,
    frozen: list[str],
    epoch: int,
    on_step: Callable[[int, float], None] | None = None,
    place: Placement | None = None,
    scaler: torch.amp.GradScaler | None = None,
    world: World = SOLO,
    net: nn.Module | None = None,
) -> tuple[float, float, int]:
    """One pass over the training batches; returns (mean loss, accuracy, images) over every rank's.

    Loss and accuracy add up on the device. Reading them makes the host wait for the GPU, so on CUDA the
    divergence check and ``on_step`` come every ``SYNC_EVERY`` steps; on the CPU, every step.

    Several ranks (``world``): each calls ``net`` (DDP around ``model``) on its slice of the global batch with a
    summing ``criterion``, scaled so that DDP's average of the gradients is the global batch's mean
    (``training.distributed``); ``on_step`` then sees this rank's figures.
    """
    place = place or cpu()
    net = net or model
    every = SYNC_EVERY if place.is_cuda else 1
    train_mode(model, frozen)
    total_loss = torch.zeros((), dtype=torch.float64, device=place.device)
    correct = torch.zeros((), dtype=torch.int64, device=place.device)
    seen = step = checked = 0
    for step, (x, y) in enumerate(batches, start=1):
        x, y = place.batch(x, y)
        with place.autocast():
            logits = net(x)
        loss = criterion(logits.float(), y)
        summed = loss.detach() * len(y)
        if world.distributed:  # a summed loss: the share of the global batch's mean that this rank adds
            images = world.all_sum(torch.tensor(len(y), dtype=torch.float32, device=place.device))
            summed = loss.detach()
            loss = loss * (world.size / images)
        if every == 1 and not torch.isfinite(loss):  # before the step: the weights stay finite
            raise TrainingDivergedError(f"loss became {loss.item()} at epoch {epoch}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total_loss += summed
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if step % every == 0:
            _check_finite(total_loss, seen, epoch, checked + 1, step, on_step)
            checked = step
    if step > checked:
        _check_finite(total_loss, seen, epoch, checked + 1, step, on_step)
    return _over_ranks(world, total_loss, correct, seen, place)


def _over_ranks(world: World, total_loss, correct, seen: int, place: Placement) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) of the sums over every rank."""
    if world.distributed:
        sums = torch.stack([total_loss, correct.to(torch.float64), torch.tensor(seen, dtype=torch.float64)])
        total_loss, correct, seen = world.all_sum(sums.to(place.device)).tolist()
        seen = int(seen)
    return float(total_loss) / max(seen, 1), float(correct) / max(seen, 1), seen


def _check_finite(total: torch.Tensor, seen: int, epoch: int, first: int, last: int, on_step) -> None:
    """Raise when the loss summed up to step ``last`` stopped being finite; else report progress."""
    value = total.item()
    if not math.isfinite(value):
        where = f"step {last}" if first == last else f"between steps {first} and {last}"
        raise TrainingDivergedError(f"loss became {value} at epoch {epoch}, {where}")
    if on_step is not None and seen:
        on_step(seen, value / seen)


def evaluate(
    model: nn.Module, criterion: nn.Module, batches: Batches, place: Placement | None = None, world: World = SOLO
) -> tuple[float, float, int]:
    """Mean loss and accuracy over the batches (every rank's), in eval mode without autograd."""
    place = place or cpu()
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=place.device)
    correct = torch.zeros((), dtype=torch.int64, device=place.device)
    seen = 0
    summing = criterion.reduction == "sum"
    with torch.inference_mode():
        for x, y in batches:
            if not len(y):  # a rank's empty share of the last batch
                continue
            x, y = place.batch(x, y)
            with place.autocast():
                logits = model(x)
            loss = criterion(logits.float(), y)
            total_loss += loss if summing else loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    return _over_ranks(world, total_loss, correct, seen, place)


def fit(
    model: nn.Module,
    source: BatchSource,
    config: TrainConfig,
    *,
    blocks: list[Block],
    head: list[str],
    frozen: list[str],
    checkpoints: CheckpointStore | None,
    fingerprint: str,
    place: Placement | None = None,
    world: World = SOLO,
) -> FitResult:
    """Train for ``config.epochs`` (or until early stopping), resuming from a matching checkpoint.

    ``model`` moves to ``place`` (the CPU by default); checkpoints hold CPU tensors wherever it trained. With
    several ranks (``world``) every rank runs this on its share of the data, and rank 0 alone writes checkpoints.
    """
    place = place or cpu()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    place.model(model)  # before the optimizer is built: it holds the parameters of the device they live on
    model = sync_batchnorm(model, world, place.device)
    scaler = place.grad_scaler()
    optimizer = build_optimizer(param_groups(model, blocks, head, config), config)
    steps = math.ceil(source.train_size / config.batch_size)
    scheduler = cosine_with_warmup(
        optimizer, warmup_steps=max(1, round(config.warmup_epochs * steps)), total_steps=config.epochs * steps
    )
    reduction = "sum" if world.distributed else "mean"
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction=reduction)
    state = _resume(checkpoints, fingerprint, model, optimizer, scheduler)
    net = world.wrap(model)  # after resuming: DDP starts every rank from rank 0's (resumed) weights
    history = state.history if state else []
    best_epoch = state.best_epoch if state else 0
    best_weights = (state.best_model or _clone(state.model)) if state else None
    best_loss = _best_loss(state) if state else math.inf
    first = state.epoch + 1 if state else 1
    started = time.monotonic()
    stopped_early = _patience_exhausted(history, best_epoch, config)
    for epoch in range(first, config.epochs + 1):
        if stopped_early:
            break
        epoch_started = time.monotonic()
        epoch_lr = optimizer.param_groups[-1]["lr"]  # the head's rate as the epoch starts
        progress = _ProgressLog(epoch, config.epochs, source.train_size) if world.main else None
        try:
            train_loss, train_acc, seen = train_one_epoch(
                model,
                criterion,
                optimizer,
                scheduler,
                source.train_batches(epoch),
                frozen=frozen,
                epoch=epoch,
                on_step=progress,
                place=place,
                scaler=scaler,
                world=world,
                net=net,
            )
        except TrainingDivergedError as err:
            kept = (
                f"the last good checkpoint (epoch {epoch - 1}) is kept at {checkpoints.folder}"
                if checkpoints is not None and epoch > 1
                else "no checkpoint was written"
            )
            raise TrainingDivergedError(
                f"Training diverged: {err}; {kept}. "
                f"Lower learning_rate (now {config.learning_rate:g}) or check the data."
            ) from None
        val_loss, val_acc, _ = evaluate(model, criterion, source.val_batches(), place, world)
        seconds = time.monotonic() - epoch_started
        if not math.isfinite(val_loss):
            raise TrainingDivergedError(f"Training diverged: validation loss became {val_loss} at epoch {epoch}.")
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 5),
                "train_accuracy": round(train_acc, 5),
                "val_loss": round(val_loss, 5),
                "val_accuracy": round(val_acc, 5),
                "lr": epoch_lr,
                "seconds": round(seconds, 2),
                "images_per_s": round(seen / seconds, 1),
            }
        )
        if best_epoch == 0 or val_loss < best_loss:
            best_epoch, best_loss, best_weights = epoch, val_loss, _clone(model.state_dict())
        _log_epoch(history[-1], config.epochs, time.monotonic() - started, epoch - first + 1)
        stopped_early = _patience_exhausted(history, best_epoch, config)
        if checkpoints is not None and world.main:
            checkpoints.save(
                TrainingState(
                    epoch=epoch,
                    fingerprint=fingerprint,
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    history=history,
                    best_epoch=best_epoch,
                    best_val_loss=best_loss,
                    best_model=best_weights if best_epoch != epoch else None,
                    torch_rng=torch.get_rng_state(),
                    python_rng=python_rng_state(),
                )
            )
        if stopped_early:
            log.info(
                "Early stopping after epoch %d: validation loss has not improved since epoch %d", epoch, best_epoch
            )
    if best_weights is not None:
        model.load_state_dict(best_weights)  # the model at its best validation loss, not its last epoch
    resumed = state.epoch if state else None
    return FitResult(history, best_epoch, resumed, stopped_early, time.monotonic() - started, _row(history, best_epoch))


def _row(history: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    return next(h for h in history if h["epoch"] == epoch)


def _best_loss(state: TrainingState) -> float:
    """The exact best validation loss; checkpoints written before it was kept fall back to the history's."""
    if state.best_val_loss is not None:
        return state.best_val_loss
    return _row(state.history, state.best_epoch)["val_loss"] if state.best_epoch else math.inf


def _clone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in weights.items()}


def _patience_exhausted(history: list[dict[str, Any]], best_epoch: int, config: TrainConfig) -> bool:
    return bool(history) and config.patience is not None and history[-1]["epoch"] - best_epoch >= config.patience


def _resume(checkpoints, fingerprint, model, optimizer, scheduler) -> TrainingState | None:
    if checkpoints is None:
        return None
    state = checkpoints.load()
    if state is None:
        return None
    if state.fingerprint != fingerprint:
        log.warning(
            "Checkpoint in %s belongs to a different training config or input; starting over", checkpoints.folder
        )
        return None
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    restore_python_rng(state.python_rng)
    log.info("Resuming from checkpoint %s after epoch %d of this task's earlier try", checkpoints.folder, state.epoch)
    return state


class _ProgressLog:
    """Logs within an epoch every 30 s, so long epochs show life in the task log."""

    def __init__(self, epoch: int, epochs: int, size: int, every: float = 30.0) -> None:
        self.epoch, self.epochs, self.size, self.every = epoch, epochs, size, every
        self.started = self.last = time.monotonic()

    def __call__(self, seen: int, loss: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = seen / (now - self.started)
            log.info(
                "Epoch %d/%d: %d/%d images, loss %.4f, %.0f images/s",
                self.epoch,
                self.epochs,
                seen,
                self.size,
                loss,
                rate,
            )


def _log_epoch(row: dict[str, Any], epochs: int, elapsed: float, done: int) -> None:
    eta = elapsed / done * (epochs - row["epoch"])
    log.info(
        "Epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | lr %.2e | %.0f images/s | ETA %s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_accuracy"],
        row["val_loss"],
        row["val_accuracy"],
        row["lr"],
        row["images_per_s"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
