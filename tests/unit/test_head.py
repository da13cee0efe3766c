"""The linear head fitted to convergence on features: it converges, chooses its penalty sensibly, is exact."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.training.head import DEFAULT_L2_GRID, HeadFit, default_l2, fit_linear_head

SPLITS = {"train": 20, "val": 10, "test": 100}  # per class


def blobs(seed: int = 0, *, dim: int = 512, classes: int = 3, signal: float = 0.2, per=SPLITS) -> dict:
    """Features like a source network's on an unlike task: non-negative, large per-dimension offsets and
    spreads, and the classes apart only by a small shift spread over every dimension."""
    g = torch.Generator().manual_seed(seed)
    offset = 2.0 + 2.0 * torch.rand(dim, generator=g)
    shift = signal * torch.randn(classes, dim, generator=g)
    out = {}
    for split, n in per.items():
        y = torch.arange(classes).repeat_interleave(n)
        noise = 0.5 * torch.randn(len(y), dim, generator=g) * offset.sqrt()
        out[split] = (torch.relu(offset + shift[y] + noise), y)
    return out


def accuracy(fit: HeadFit, split: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = split
    return ((x @ fit.weight.T + fit.bias).argmax(1) == y).double().mean().item()


def test_separable_data_is_fitted_to_convergence():
    data = blobs(signal=1.0, dim=32)
    fit = fit_linear_head(data["train"], data["val"], num_classes=3)
    assert fit.converged and fit.iterations > 0
    assert fit.train_accuracy == fit.val_accuracy == 1.0 and accuracy(fit, data["test"]) == 1.0
    assert fit.weight.shape == (3, 32) and fit.bias.shape == (3,) and fit.weight.dtype == torch.float32
    chosen = next(row for row in fit.candidates if row["l2"] == fit.l2)
    # The lowest validation loss, give or take LOSS_TIE (ties go to the stronger penalty).
    assert (
        chosen["converged"] and chosen["val_loss"] == fit.val_loss <= min(r["val_loss"] for r in fit.candidates) + 1e-4
    )


def test_a_shapes_like_task_that_the_epoch_loop_left_at_chance_is_learned():
    """Three classes, 20 training features each, unlike the source task: four AdamW epochs (as the DAG's
    epoch loop ran them) leave a head at chance; the fit to convergence finds the classes."""
    from airflow_tl.training.config import TrainConfig
    from airflow_tl.training.engine import fit
    from airflow_tl.training.sources import TensorBatches

    data = blobs()
    config = TrainConfig(freeze_layers="all", epochs=4, learning_rate=3e-3, batch_size=64)
    torch.manual_seed(0)
    old = nn.Linear(512, 3)
    source = TensorBatches(data["train"], data["val"], batch_size=64, seed=0)
    fit(old, source, config, blocks=[], head=[""], frozen=[], checkpoints=None, fingerprint="t")
    with torch.no_grad():
        before = (old(data["test"][0]).argmax(1) == data["test"][1]).double().mean().item()
    assert before < 0.4, before  # the premise: chance is 1/3

    head = fit_linear_head(data["train"], data["val"], num_classes=3)
    assert accuracy(head, data["test"]) > 0.9, head


def test_noisy_small_data_gets_a_stronger_penalty_than_clean_data():
    clean = blobs(signal=0.2)
    noisy = blobs(signal=0.05)
    clean_fit = fit_linear_head(clean["train"], clean["val"], num_classes=3)
    noisy_fit = fit_linear_head(noisy["train"], noisy["val"], num_classes=3)
    assert noisy_fit.l2 >= 100 * clean_fit.l2, (noisy_fit.l2, clean_fit.l2)
    # The noisy path turned back up: weaker penalties fitted the training noise and lost on validation.
    assert noisy_fit.candidates[-1]["val_loss"] > noisy_fit.val_loss
    assert noisy_fit.candidates[-1]["train_loss"] < noisy_fit.train_loss


def test_the_fit_is_deterministic_and_does_not_depend_on_the_seed():
    data = blobs(seed=1, signal=0.1)
    first = fit_linear_head(data["train"], data["val"], num_classes=3, seed=0)
    second = fit_linear_head(data["train"], data["val"], num_classes=3, seed=7)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    timeless = [[{k: v for k, v in row.items() if k != "seconds"} for row in fit.candidates] for fit in (first, second)]
    assert timeless[0] == timeless[1]


def test_weight_and_bias_apply_to_raw_features_whatever_their_offset_and_scale():
    data = blobs(seed=2, dim=64, signal=0.3)
    g = torch.Generator().manual_seed(3)
    scale = 10.0 ** torch.empty(64).uniform_(-3, 3, generator=g)
    offset = 100.0 * torch.randn(64, generator=g)
    moved = {split: (x * scale + offset, y) for split, (x, y) in data.items()}
    fit = fit_linear_head(data["train"], data["val"], num_classes=3)
    moved_fit = fit_linear_head(moved["train"], moved["val"], num_classes=3)
    for split, name in (("train", "train_loss"), ("val", "val_loss")):
        x, y = moved[split]
        raw_loss = F.cross_entropy(x.double() @ moved_fit.weight.double().T + moved_fit.bias.double(), y).item()
        assert raw_loss == pytest.approx(getattr(moved_fit, name), abs=2e-4)
    # Standardisation makes the fit blind to per-dimension offsets and scales: the same head, in other units.
    logits = data["test"][0] @ fit.weight.T + fit.bias
    moved_logits = moved["test"][0].double() @ moved_fit.weight.double().T + moved_fit.bias.double()
    assert torch.allclose(moved_logits.float(), logits, atol=1e-2)
    assert moved_fit.l2 == fit.l2


def test_a_constant_dimension_gets_no_weight():
    data = blobs(seed=4, dim=16, signal=0.5)
    x, y = data["train"]
    x = x.clone()
    x[:, 5] = 3.0
    fit = fit_linear_head((x, y), data["val"], num_classes=3)
    assert fit.weight[:, 5].abs().max() < 1e-6 and torch.isfinite(fit.weight).all()


@pytest.mark.parametrize("val", [None, "empty"])
def test_without_validation_features_the_default_penalty_is_used_and_logged(val, caplog):
    data = blobs(seed=5, dim=16, signal=0.5)
    if val == "empty":
        val = (torch.empty(0, 16), torch.empty(0, dtype=torch.long))
    with caplog.at_level(logging.INFO, logger="airflow_tl.training.head"):
        fit = fit_linear_head(data["train"], val, num_classes=3)
    assert fit.l2 == default_l2(60) == 1 / 60 and len(fit.candidates) == 1
    assert fit.val_loss is None and fit.val_accuracy is None and fit.converged
    assert "No validation features to choose the penalty on: using the default l2 0.0167" in caplog.text
    assert fit.to_training()["selection"] == "default (no validation)"


def test_the_path_stops_once_weaker_penalties_stop_helping():
    data = blobs(signal=0.05)
    fit = fit_linear_head(data["train"], data["val"], num_classes=3)
    tried = [row["l2"] for row in fit.candidates]
    assert tried == list(DEFAULT_L2_GRID[: len(tried)]) and len(tried) < len(DEFAULT_L2_GRID)
    history = fit.to_history()
    assert [row["l2"] for row in history if row["chosen"]] == [fit.l2]
    training = fit.to_training()
    assert training["method"] == "lbfgs" and training["l2"] == fit.l2
    assert [c["l2"] for c in training["candidates"]] == tried


def _pair(n: int = 6, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, d), torch.arange(n) % 3


@pytest.mark.parametrize(
    ("train", "val", "kwargs", "message"),
    [
        ((torch.empty(0, 4), torch.empty(0, dtype=torch.long)), None, {}, "The training split has no features"),
        ((torch.rand(6, 4), torch.arange(5) % 3), None, {}, r"features \(6, 4\) and labels \(5,\)"),
        (_pair(), (torch.rand(3, 5), torch.arange(3)), {}, "validation features have 5 dimensions but the training"),
        (
            (torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, float("inf")]]), torch.tensor([0, 1, 2])),
            None,
            {},
            r"training features hold 2 non-finite values \(NaN or inf\) in 2 of 3 rows, the first in row 1",
        ),
        (_pair(), None, {"num_classes": 2}, r"training labels must lie in 0…1 \(2 classes\); found \[2\]"),
        ((torch.rand(4, 4), torch.tensor([0, 1, 0, 1])), None, {"class_names": ["a", "b", "c"]}, "classes c:"),
        (_pair(), None, {"l2_grid": [0.1, -1.0]}, "l2_grid must hold one or more finite numbers > 0"),
        ((torch.rand(6, 4), torch.rand(6)), None, {}, "labels integers; got torch.float32 and torch.float32"),
    ],
)
def test_unusable_input_fails_clearly(train, val, kwargs, message):
    kwargs = {"num_classes": 3} | kwargs
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        fit_linear_head(train, val, **kwargs)
    assert isinstance(raised.value, PermanentError)  # no retry fixes the data
