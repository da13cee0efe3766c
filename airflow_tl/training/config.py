"""The training configuration: one validated object, recorded in the model card and checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from airflow_tl.exceptions import InvalidArgumentError

OPTIMIZERS = ("adamw", "sgd")
# Block names are module names: "layer3", "encoder_layer_0", "Mixed_5b" (models/blocks.py).
BLOCK_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclass
class TrainConfig:
    """How to train. ``freeze_layers`` is 0…n blocks, the name of the last block to freeze, or ``"all"`` (head only).

    Whether a count or name fits the model is known only with its blocks (``models.freezing.resolve_freeze_layers``).
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    layer_decay: float | None = None
    patience: int | None = 3
    # Keeps validation loss honest on small data: without it a head grows overconfident and early
    # stopping halts while accuracy is still rising.
    label_smoothing: float = 0.1
    augment: bool = False
    seed: int = 0
    freeze_layers: int | str = 0
    init: str = "pretrained"
    # LP-FT (training/lp_ft.py): fit a new head as a linear probe on the frozen features before training.
    lp_ft: bool = False

    def __post_init__(self) -> None:
        self.optimizer = str(self.optimizer).lower()
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("momentum", self.momentum, low=0.0, high=1.0)
        _number("warmup_epochs", self.warmup_epochs, low=0.0)
        _number("label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        if self.optimizer not in OPTIMIZERS:
            raise InvalidArgumentError(
                f"Argument optimizer accepts only 'adamw' and 'sgd'. Provided value: {self.optimizer!r}."
            )
        if self.layer_decay is not None:
            _number("layer_decay", self.layer_decay, low=0.0, high=1.0, low_open=True)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if self.init not in ("pretrained", "random"):
            raise InvalidArgumentError(
                f"Argument init accepts only 'pretrained' and 'random'. Provided value: {self.init!r}."
            )
        if not isinstance(self.lp_ft, bool):
            raise InvalidArgumentError(f"Argument lp_ft accepts only True and False. Provided value: {self.lp_ft!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidArgumentError(f"Argument seed must be an integer. Provided value: {self.seed!r}.")
        self.freeze_layers = _freeze_layers(self.freeze_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, **context: Any) -> str:
        """Identifies a training job: a checkpoint is resumed only by the same config on the same inputs."""
        return hashlib.sha256(json.dumps([self.to_dict(), context], sort_keys=True, default=str).encode()).hexdigest()


def _freeze_layers(value: Any) -> int | str:
    """A count (a digit string becomes one), ``"all"`` or something shaped like a block name."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    if (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and re.fullmatch(BLOCK_NAME_PATTERN, value)
    ):
        return value
    raise InvalidArgumentError(
        "Argument freeze_layers accepts only a block count (0 or more), a block name or 'all'. "
        f"Provided value: {value!r}."
    )


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"Argument {name} must be a positive integer. Provided value: {value!r}.")


def _number(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise InvalidArgumentError(f"Argument {name} must be a number {bounds}. Provided value: {value!r}.")
