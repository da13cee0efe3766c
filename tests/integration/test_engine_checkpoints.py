"""The epoch loop with checkpoints in S3: refusing to diverge, and resuming a crashed job exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from airflow_tl.exceptions import AccessDeniedError, AirflowTLError, PermanentError
from airflow_tl.training.checkpoint import POINTER, CheckpointStore
from airflow_tl.training.config import TrainConfig
from airflow_tl.training.engine import TrainingDivergedError, fit
from airflow_tl.training.sources import TensorBatches
from tests.faultproxy import Fault

DIM, CLASSES = 16, 3
TIMING_KEYS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def store(local_s3):
    """The conftest ``store``, built the same production way, once per module: building a client costs ~0.5 s."""
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(42)) * 1.5
    y = torch.arange(n) % CLASSES
    return centres[y] + torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), y


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # Dropout draws from torch's global RNG, so an exact resume needs the checkpoint's RNG state too.
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, CLASSES))


def source(kind: str = "learnable") -> TensorBatches:
    if kind == "learnable":
        return TensorBatches(blobs(96, 1), blobs(48, 2), batch_size=16, seed=5)
    # Trained on class 0 only, validated on class 1 only: the first epoch stays the best one.
    x, _ = blobs(96, 1)
    return TensorBatches((x, torch.zeros(96, dtype=torch.long)), (x[:48], torch.ones(48, dtype=torch.long)),
                         batch_size=16, seed=5)  # fmt: skip


class Crash(Exception):
    """The worker dying mid-task, as far as the epoch loop can tell."""


class CrashingAt(TensorBatches):
    def __init__(self, inner: TensorBatches, epoch: int) -> None:
        super().__init__(inner.train, inner.val, batch_size=inner.batch_size, seed=inner.seed)
        self.crash_epoch = epoch

    def train_batches(self, epoch: int):
        for step, batch in enumerate(super().train_batches(epoch)):
            if epoch == self.crash_epoch and step == 2:
                raise Crash(f"killed in epoch {epoch}")
            yield batch


class NaNAt(TensorBatches):
    def __init__(self, inner: TensorBatches, epoch: int) -> None:
        super().__init__(inner.train, inner.val, batch_size=inner.batch_size, seed=inner.seed)
        self.nan_epoch = epoch

    def train_batches(self, epoch: int):
        for x, y in super().train_batches(epoch):
            yield (torch.full_like(x, math.nan) if epoch == self.nan_epoch else x), y


def train(model, batches, config, checkpoints, fingerprint="job-1"):
    return fit(model, batches, config, blocks=[], head=[], frozen=[], checkpoints=checkpoints, fingerprint=fingerprint)


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def assert_same_weights(a: nn.Module, b: nn.Module, exact: bool = True) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert torch.allclose(sa[key], sb[key], atol=1e-6), key


CONFIG = TrainConfig(epochs=5, batch_size=16, learning_rate=0.02, patience=None, seed=11)


# --- divergence -------------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(store, bucket):
    folder = f"s3://{bucket}/runs/nan/checkpoints"
    checkpoints = CheckpointStore(store, folder)
    model = model_for(0)

    with pytest.raises(TrainingDivergedError) as err:
        train(model, NaNAt(source(), epoch=2), CONFIG, checkpoints)

    message = str(err.value)
    assert "epoch 2" in message and folder in message
    assert "last good checkpoint (epoch 1)" in message and "learning_rate" in message
    kept = CheckpointStore(store, folder).load()
    assert kept is not None and kept.epoch == 1 and kept.fingerprint == "job-1"
    assert [row["epoch"] for row in kept.history] == [1]
    assert all(torch.isfinite(v).all() for v in kept.model.values())
    fresh = model_for(1)
    fresh.load_state_dict(kept.model)  # loadable into the model, as a retry would


def test_nan_loss_in_the_first_epoch_says_no_checkpoint_was_written(store, bucket):
    folder = f"s3://{bucket}/runs/nan1/checkpoints"
    with pytest.raises(TrainingDivergedError, match="at epoch 1.*no checkpoint was written"):
        train(model_for(0), NaNAt(source(), epoch=1), CONFIG, CheckpointStore(store, folder))
    assert CheckpointStore(store, folder).load() is None


# --- resume -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["learnable", "best_epoch_first"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(store, bucket, kind):
    uninterrupted = model_for(0)
    expected = train(uninterrupted, source(kind), CONFIG, checkpoints=None)

    checkpoints = CheckpointStore(store, f"s3://{bucket}/runs/{kind}/checkpoints")
    with pytest.raises(Crash):
        train(model_for(0), CrashingAt(source(kind), epoch=3), CONFIG, checkpoints)
    assert checkpoints.load().epoch == 2  # epoch 3 never completed

    retried = model_for(123)  # a fresh worker: other initial weights, RNG wherever it happens to be
    torch.rand(7)
    result = train(retried, source(kind), CONFIG, checkpoints)

    assert result.resumed_from == 2
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    assert without_timing(result.history) == without_timing(expected.history)
    assert result.best_epoch == expected.best_epoch
    if kind == "best_epoch_first":
        assert result.best_epoch == 1  # so the best weights must have come from the checkpoint
    assert_same_weights(retried, uninterrupted)
    assert checkpoints.load().epoch == 5


def test_retry_after_the_last_epoch_trains_no_more(store, bucket):
    checkpoints = CheckpointStore(store, f"s3://{bucket}/runs/done/checkpoints")
    first_model = model_for(0)
    first = train(first_model, source(), CONFIG, checkpoints)

    again_model = model_for(9)
    again = train(again_model, source(), CONFIG, checkpoints)

    assert again.resumed_from == 5
    assert again.history == first.history and again.best_epoch == first.best_epoch
    assert_same_weights(again_model, first_model)


def test_checkpoint_of_another_job_is_not_resumed(store, bucket):
    checkpoints = CheckpointStore(store, f"s3://{bucket}/runs/other/checkpoints")
    with pytest.raises(Crash):
        train(model_for(0), CrashingAt(source(), epoch=3), CONFIG, checkpoints, fingerprint="job-A")

    reference = model_for(0)
    train(reference, source(), CONFIG, None, fingerprint="job-B")
    fresh = model_for(0)
    result = train(fresh, source(), CONFIG, checkpoints, fingerprint="job-B")

    assert result.resumed_from is None
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    assert_same_weights(fresh, reference)
    assert checkpoints.load().fingerprint == "job-B"


# --- S3 faults on the checkpoints (tests/faultproxy.py) ----------------------------------------------------------


def test_a_pointer_that_cannot_be_read_fails_training_instead_of_starting_over(store, bucket, proxy, faulty):

    folder = f"s3://{bucket}/runs/job/checkpoints"
    with pytest.raises(Crash):
        train(model_for(0), CrashingAt(source(), epoch=3), CONFIG, CheckpointStore(store, folder))
    before = {o.key: o.etag for o in store.list(folder)}
    assert sorted(k.rsplit("/", 1)[-1] for k in before) == ["epoch-0002.safetensors", POINTER]
    checkpoints = CheckpointStore(faulty(retries={"mode": "standard", "total_max_attempts": 3}), folder)

    with proxy.scenario(Fault("deny", path=f"/{POINTER}$")), pytest.raises(AccessDeniedError) as denied:
        train(model_for(0), source(), CONFIG, checkpoints)
    assert f"while reading {folder}/{POINTER}" in str(denied.value) and proxy.requests == 1

    with proxy.scenario(Fault("internal", path=f"/{POINTER}$")), pytest.raises(AirflowTLError) as failing:
        train(model_for(0), source(), CONFIG, checkpoints)
    assert f"InternalError (HTTP 500) while reading {folder}/{POINTER}" in str(failing.value)
    assert not isinstance(failing.value, PermanentError) and proxy.injected["internal"] == 3

    assert {o.key: o.etag for o in store.list(folder)} == before  # no epoch 1 written, the pointer untouched


def test_a_resume_reads_its_checkpoint_through_resets_mid_body(store, bucket, proxy, faulty):
    uninterrupted = model_for(0)
    train(uninterrupted, source(), CONFIG, checkpoints=None)
    folder = f"s3://{bucket}/runs/reset/checkpoints"
    with pytest.raises(Crash):
        train(model_for(0), CrashingAt(source(), epoch=3), CONFIG, CheckpointStore(store, folder))

    resumed = model_for(7)
    with proxy.scenario(Fault("reset", methods=("GET",), min_body=1, every=2)):
        result = train(resumed, source(), CONFIG, CheckpointStore(faulty(), folder))
    assert result.resumed_from == 2
    assert_same_weights(resumed, uninterrupted)
    reset = [e.path for e in proxy.events]
    assert any(p.endswith("/latest.json") for p in reset) and any("/epoch-0002.safetensors" in p for p in reset)
