"""The epoch loop on synthetic data: it learns, stops early, returns its best weights; frozen modules skip autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from airflow_tl.models.card import Block
from airflow_tl.models.freezing import freeze_first, without_autograd
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.engine import fit
from airflow_tl.training.sources import TensorBatches

DIM, CLASSES = 16, 4
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s"}


def blobs(n: int, seed: int, *, spread: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around fixed centres, one per class: linearly separable with a wide margin."""
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(42)) * spread
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    return centres[y] + torch.randn(n, DIM, generator=generator), y


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(DIM, CLASSES)


def run(model: nn.Module, source, config: TrainConfig, frozen: list[str] | None = None, blocks=None):
    return fit(
        model, source, config, blocks=blocks or [], head=[], frozen=frozen or [], checkpoints=None, fingerprint="fp"
    )


class Recording(TensorBatches):
    """Records the model's weights at the end of each epoch's training, when validation starts."""

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        self.weights: list[dict[str, torch.Tensor]] = []

    def val_batches(self):
        self.weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return super().val_batches()


def test_fit_learns_separable_blobs():
    model = linear()
    source = TensorBatches(blobs(256, seed=1), blobs(128, seed=2), batch_size=32, seed=0)
    config = TrainConfig(epochs=6, batch_size=32, learning_rate=0.05, patience=None, seed=0)

    result = run(model, source, config)

    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.resumed_from is None and result.stopped_early is False
    assert result.history[0]["val_accuracy"] < result.best["val_accuracy"]
    assert result.best["val_accuracy"] > 0.9
    assert result.best == next(h for h in result.history if h["epoch"] == result.best_epoch)
    assert result.best["val_loss"] == min(h["val_loss"] for h in result.history)
    with torch.no_grad():  # the model handed back is the trained one
        x, y = blobs(128, seed=3)
        assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_history_rows_have_the_documented_keys():
    source = TensorBatches(blobs(64, seed=1), blobs(32, seed=2), batch_size=16, seed=0)
    result = run(linear(), source, TrainConfig(epochs=3, batch_size=16, patience=None))
    for epoch, row in enumerate(result.history, start=1):
        assert set(row) == HISTORY_KEYS
        assert row["epoch"] == epoch
        assert 0.0 <= row["train_accuracy"] <= 1.0 and 0.0 <= row["val_accuracy"] <= 1.0
        assert row["train_loss"] > 0 and row["val_loss"] > 0
        assert row["lr"] >= 0 and row["seconds"] >= 0 and row["images_per_s"] > 0


def test_fit_is_deterministic_for_a_seed():
    def once():
        model = linear()
        source = TensorBatches(blobs(64, seed=1), blobs(32, seed=2), batch_size=8, seed=3)
        history = run(model, source, TrainConfig(epochs=3, batch_size=8, seed=3, patience=None)).history
        return model.state_dict(), [h["val_loss"] for h in history]

    (first, losses), (second, again) = once(), once()
    assert losses == again
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_early_stopping_returns_the_best_epoch_weights():
    """Training on class 0 only while validating on class 1 only: validation loss rises every epoch."""
    x, _ = blobs(64, seed=1)
    train = (x, torch.zeros(64, dtype=torch.long))
    val = (x[:32], torch.ones(32, dtype=torch.long))
    model = linear()
    source = Recording(model, train, val, batch_size=16, seed=0)
    config = TrainConfig(epochs=30, batch_size=16, learning_rate=0.05, patience=2, warmup_epochs=0)

    result = run(model, source, config)

    losses = [h["val_loss"] for h in result.history]
    assert losses == sorted(losses) and len(set(losses)) == len(losses)  # strictly worse each epoch
    assert result.stopped_early is True
    assert result.best_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # stopped after `patience` epochs without progress
    assert len(source.weights) == 3
    final = model.state_dict()
    assert all(torch.equal(final[k], source.weights[0][k]) for k in final)  # epoch 1's weights, not epoch 3's
    assert not all(torch.equal(final[k], source.weights[-1][k]) for k in final)


def test_best_weights_are_kept_when_the_best_epoch_is_in_the_middle():
    """Noisy labels: validation improves at first, then the model overfits; no early stopping."""
    generator = torch.Generator().manual_seed(0)
    x, y = blobs(40, seed=1, spread=0.6)
    y = torch.where(torch.rand(40, generator=generator) < 0.5, torch.randint(0, CLASSES, (40,), generator=generator), y)
    val = blobs(200, seed=2, spread=0.6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 256), nn.ReLU(), nn.Linear(256, CLASSES))
    source = Recording(model, (x, y), val, batch_size=8, seed=0)
    config = TrainConfig(epochs=25, batch_size=8, learning_rate=0.01, patience=None, warmup_epochs=0, weight_decay=0)

    result = run(model, source, config)

    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert 1 < result.best_epoch < 25, losses  # a genuine middle
    final = model.state_dict()
    best = source.weights[result.best_epoch - 1]
    assert all(torch.equal(final[k], best[k]) for k in final)


# --- without_autograd -------------------------------------------------------------------------------------------


def three_layers(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 12), nn.ReLU(), nn.Linear(12, 12), nn.Linear(12, CLASSES))


BLOCKS = [Block("first", ["0"]), Block("act", ["1"]), Block("second", ["2"])]


def outputs_of(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    captured = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _a, out, n=n: captured.__setitem__(n, out)) for n in names]
    captured["output"] = model(x)
    for h in handles:
        h.remove()
    return captured


def test_without_autograd_cuts_the_graph_of_frozen_modules():
    model = three_layers()  # parameters deliberately still require grad: only the hooks stop autograd
    x = torch.randn(5, DIM)
    handles = without_autograd(model, ["0", "2", "missing.module"])
    assert len(handles) == 4  # a pre-hook and a hook per existing module

    out = outputs_of(model, ["0", "1", "2", "3"], x)
    assert not out["0"].requires_grad and not out["2"].requires_grad
    assert not out["1"].requires_grad  # fed only by a frozen module
    assert out["3"].requires_grad and out["output"].requires_grad  # the trainable part still builds a graph
    assert torch.is_grad_enabled()  # global state restored after the forward pass

    out["output"].sum().backward()
    assert model[0].weight.grad is None and model[2].weight.grad is None
    assert model[3].weight.grad is not None

    for handle in handles:
        handle.remove()
    assert outputs_of(model, ["0"], x)["0"].requires_grad  # the hooks were what made the difference


def test_without_autograd_keeps_an_outer_no_grad():
    model = three_layers()
    without_autograd(model, ["0"])
    with torch.no_grad():
        assert not model(torch.randn(2, DIM)).requires_grad
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_without_autograd_restores_grad_mode_when_a_frozen_module_fails():
    model = three_layers()
    without_autograd(model, ["0"])
    with pytest.raises(RuntimeError):
        model(torch.randn(2, DIM + 1))  # wrong width: the frozen first layer raises
    try:
        assert torch.is_grad_enabled(), "autograd left switched off for the whole thread after a failed forward"
    finally:
        torch.set_grad_enabled(True)


def test_training_with_frozen_blocks_updates_only_the_rest():
    model = three_layers()
    frozen = freeze_first(model, BLOCKS, 3)
    handles = without_autograd(model, frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = TensorBatches(blobs(128, seed=1), blobs(64, seed=2), batch_size=16, seed=0)

    result = run(model, source, TrainConfig(epochs=4, batch_size=16, learning_rate=0.05, patience=None), frozen, BLOCKS)

    after = model.state_dict()
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(after[key], before[key]), key
        assert model.get_parameter(key).grad is None, key
    for key in ("3.weight", "3.bias"):
        assert not torch.equal(after[key], before[key]), key
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best["val_accuracy"] > 0.7
    for handle in handles:
        handle.remove()
