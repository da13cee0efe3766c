"""The epoch loop's device code run for real on the CPU: autocast with bfloat16 and with float16 plus a
gradient scaler, and channels-last convolutions, as CUDA gets them. Results agree with float32 to autocast's
tolerance, and a checkpoint written under one placement resumes under another: checkpoints are device-free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from airflow_tl.devices import Placement, cpu
from airflow_tl.training.checkpoint import CheckpointStore
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.engine import fit
from airflow_tl.training.sources import TensorBatches

CLASSES = 3


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small images whose class is a coloured square's position: a convolution has something to learn."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = torch.randn(n, 3, 12, 12, generator=generator) * 0.3
    for i, label in enumerate(y.tolist()):
        x[i, label, 4 * label : 4 * label + 4, 2:10] += 2.0
    return x, y


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, CLASSES),
    )  # fmt: skip


def emulated(dtype: torch.dtype | None) -> Placement:
    """What ``placement('cuda')`` builds, on the CPU: autocast in ``dtype`` and channels-last."""
    return Placement(torch.device("cpu"), amp_dtype=dtype, channels_last=True, name="CPU emulating CUDA")


SOURCE = TensorBatches(images(120, 1), images(60, 2), batch_size=20, seed=3)
CONFIG = TrainConfig(epochs=4, learning_rate=0.01, patience=None, warmup_epochs=0.5)


def run(place: Placement, checkpoints=None, config=CONFIG, fingerprint="job"):
    model = convnet()
    result = fit(
        model, SOURCE, config, blocks=[], head=[], frozen=[], checkpoints=checkpoints, fingerprint=fingerprint,
        place=place,
    )  # fmt: skip
    return model, result


@pytest.fixture(scope="module")
def float32_run():
    return run(cpu())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_and_channels_last_train_to_what_float32_does(float32_run, dtype):
    place = emulated(dtype)
    assert (place.grad_scaler() is not None) == (dtype is torch.float16)  # bfloat16 needs no scaler
    model, result = run(place)
    reference = float32_run[1]
    assert result.best["val_accuracy"] >= 0.9 and reference.best["val_accuracy"] >= 0.9
    for ours, theirs in zip(result.history, reference.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.05, abs=0.02)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=0.05, abs=0.02)
    conv = model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the layout tensor cores read


class Killed(Exception):
    """The worker dying mid-epoch, as far as the epoch loop can tell."""


class KilledInEpoch3(TensorBatches):
    def __init__(self) -> None:
        super().__init__(SOURCE.train, SOURCE.val, batch_size=SOURCE.batch_size, seed=SOURCE.seed)

    def train_batches(self, epoch: int):
        for step, batch in enumerate(super().train_batches(epoch)):
            if epoch == 3 and step == 1:
                raise Killed
            yield batch


def test_a_checkpoint_from_a_mixed_precision_channels_last_run_resumes_in_float32(store, bucket, float32_run):
    folder = f"s3://{bucket}/device-free/checkpoints"
    with pytest.raises(Killed):
        fit(convnet(), KilledInEpoch3(), CONFIG, blocks=[], head=[], frozen=[],
            checkpoints=CheckpointStore(store, folder), fingerprint="job", place=emulated(torch.bfloat16))  # fmt: skip
    saved = CheckpointStore(store, folder).load()
    assert saved.epoch == 2
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in saved.model.values())

    # The retry lands on another placement: it resumes after epoch 2 instead of starting over.
    _, resumed = run(cpu(), CheckpointStore(store, folder))
    assert resumed.resumed_from == 2 and [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.best["val_accuracy"] >= 0.9
    final = float32_run[1].history[-1]["val_loss"]
    assert resumed.history[-1]["val_loss"] == pytest.approx(final, rel=0.1, abs=0.03)
