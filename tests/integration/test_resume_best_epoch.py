"""A resumed run chooses the same best epoch as an uninterrupted one, even when validation losses differ only
below the history's five rounded decimals: the checkpoint keeps the exact best loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from airflow_tl.training import engine
from airflow_tl.training.checkpoint import CheckpointStore
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.sources import TensorBatches

# Epoch 2 is the best; epoch 3 is 5e-7 worse, so rounded to 5 decimals the two look the same (0.5).
LOSSES = {1: 0.5000040, 2: 0.4999990, 3: 0.4999995, 4: 0.6}
CONFIG = TrainConfig(epochs=4, batch_size=8, learning_rate=0.01, patience=None, seed=3)


class Crash(Exception):
    pass


class Batches(TensorBatches):
    def __init__(self, crash_in_epoch: int | None = None) -> None:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        y = torch.arange(32) % 2
        super().__init__((x, y), (x, y), batch_size=8, seed=1)
        self.crash_in_epoch = crash_in_epoch

    def train_batches(self, epoch: int):
        if epoch == self.crash_in_epoch:
            raise Crash(f"killed in epoch {epoch}")
        yield from super().train_batches(epoch)


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation losses as scripted for each epoch; training itself is real. Set ``["epoch"]`` to the epoch
    before the first one a fit will validate."""
    state = {"epoch": 0}

    def evaluate(model, criterion, batches, place=None, world=None):
        for _ in batches:
            pass
        state["epoch"] += 1
        return LOSSES[state["epoch"]], 0.5, 32

    monkeypatch.setattr(engine, "evaluate", evaluate)
    return state


def fit(batches, checkpoints):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    result = engine.fit(model, batches, CONFIG, blocks=[], head=[], frozen=[], checkpoints=checkpoints, fingerprint="f")
    return result, model


def test_a_resumed_run_keeps_the_exact_best_loss(store, bucket, scripted_validation):
    whole, whole_model = fit(Batches(), None)
    assert whole.best_epoch == 2

    checkpoints = CheckpointStore(store, f"s3://{bucket}/ckpt")
    scripted_validation["epoch"] = 0
    with pytest.raises(Crash):
        fit(Batches(crash_in_epoch=3), checkpoints)  # dies after epoch 2's checkpoint
    assert checkpoints.load().best_val_loss == LOSSES[2]  # exact, not the history's 0.5
    scripted_validation["epoch"] = 2  # the resumed run validates epochs 3 and 4
    resumed, resumed_model = fit(Batches(), checkpoints)

    assert resumed.resumed_from == 2 and resumed.best_epoch == whole.best_epoch == 2
    for key, value in whole_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
