"""Training checkpoints in S3: exact round trips that training can continue from, one live epoch file, no pickle."""

from __future__ import annotations

import json
import pickle
import random
import struct

import pytest
import torch
from torch import nn

from airflow_tl.exceptions import IntegrityError
from airflow_tl.training.checkpoint import (
    POINTER,
    CheckpointStore,
    TrainingState,
    python_rng_state,
    restore_python_rng,
)


@pytest.fixture(scope="module")
def store(local_s3):
    """The conftest ``store``, built the same production way, once per module: building a client costs ~0.5 s."""
    from airflow_tl.hooks.s3 import s3_store

    return s3_store("aws_default")


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.02}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=0.01)


def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + 0.5 * step))


BATCHES = [(torch.randn(16, 6, generator=torch.Generator().manual_seed(i)), torch.arange(16) % 3) for i in range(10)]


def train_steps(model, optimizer, scheduler, batches) -> None:
    model.train()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def clone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in weights.items()}


def assert_bitwise(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


def as_json(value):
    return json.loads(json.dumps(value))


def state_after(kind: str, steps: int, *, epoch: int = 2, best_model=None) -> tuple[TrainingState, tuple]:
    model = make_model(0)
    optimizer = make_optimizer(kind, model)
    scheduler = make_scheduler(optimizer)
    train_steps(model, optimizer, scheduler, BATCHES[:steps])
    state = TrainingState(
        epoch=epoch,
        fingerprint="fp-123",
        model=clone(model.state_dict()),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        history=[{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.25}],
        best_epoch=1,
        best_model=best_model,
        torch_rng=torch.get_rng_state(),
        python_rng=python_rng_state(),
    )
    return state, (model, optimizer, scheduler)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_round_trip_is_exact(store, bucket, kind):
    best = clone(make_model(5).state_dict())
    state, (_, optimizer, _) = state_after(kind, steps=2, best_model=best)
    optimizer_tensors = {
        f"{i}.{n}": v.clone() for i, s in optimizer.state_dict()["state"].items() for n, v in s.items()
    }
    folder = f"s3://{bucket}/runs/r1/checkpoints"
    checkpoints = CheckpointStore(store, folder + "/")

    assert checkpoints.save(state) == f"{folder}/epoch-0002.safetensors"
    loaded = CheckpointStore(store, folder).load()

    assert loaded is not None
    assert (loaded.epoch, loaded.fingerprint, loaded.best_epoch) == (2, "fp-123", 1)
    assert loaded.history == state.history
    assert_bitwise(loaded.model, state.model)
    assert loaded.model["1.num_batches_tracked"].item() == 2
    assert loaded.best_model is not None
    assert_bitwise(loaded.best_model, best)
    assert torch.equal(loaded.torch_rng, state.torch_rng)
    assert loaded.scheduler == as_json(state.scheduler)
    assert loaded.optimizer["param_groups"] == as_json(state.optimizer["param_groups"])
    loaded_tensors = {f"{i}.{n}": v for i, s in loaded.optimizer["state"].items() for n, v in s.items()}
    assert_bitwise(loaded_tensors, optimizer_tensors)
    expected_names = {"momentum_buffer"} if kind == "sgd" else {"step", "exp_avg", "exp_avg_sq"}
    assert {n for s in loaded.optimizer["state"].values() for n in s} == expected_names

    random.seed(1234)  # move the Python RNG on, then restore the checkpoint's
    restore_python_rng(loaded.python_rng)
    restored = random.getstate()
    restore_python_rng(state.python_rng)
    assert restored == random.getstate()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_training_continues_bitwise_identically(store, bucket, kind):
    state, (model, optimizer, scheduler) = state_after(kind, steps=2)
    checkpoints = CheckpointStore(store, f"s3://{bucket}/ckpt")
    checkpoints.save(state)
    train_steps(model, optimizer, scheduler, BATCHES[2:6])  # the run that was never interrupted

    loaded = checkpoints.load()
    resumed = make_model(99)  # other initial weights: everything must come from the checkpoint
    resumed_optimizer = make_optimizer(kind, resumed)
    resumed_scheduler = make_scheduler(resumed_optimizer)
    resumed.load_state_dict(loaded.model)
    resumed_optimizer.load_state_dict(loaded.optimizer)
    resumed_scheduler.load_state_dict(loaded.scheduler)
    assert resumed_scheduler.get_last_lr() == pytest.approx(make_scheduler_lrs_after(kind, 2))
    train_steps(resumed, resumed_optimizer, resumed_scheduler, BATCHES[2:6])

    assert_bitwise(resumed.state_dict(), model.state_dict())
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()
    for group, expected in zip(resumed_optimizer.param_groups, optimizer.param_groups, strict=True):
        assert group["lr"] == expected["lr"] and group["weight_decay"] == expected["weight_decay"]


def make_scheduler_lrs_after(kind: str, steps: int) -> list[float]:
    model = make_model(0)
    optimizer = make_optimizer(kind, model)
    scheduler = make_scheduler(optimizer)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()


def test_best_model_absent_or_present(store, bucket):
    without, _ = state_after("adamw", steps=1, best_model=None)
    CheckpointStore(store, f"s3://{bucket}/a").save(without)
    assert CheckpointStore(store, f"s3://{bucket}/a").load().best_model is None

    best = clone(make_model(7).state_dict())
    with_best, _ = state_after("adamw", steps=1, best_model=best)
    CheckpointStore(store, f"s3://{bucket}/b").save(with_best)
    loaded = CheckpointStore(store, f"s3://{bucket}/b").load()
    assert_bitwise(loaded.best_model, best)
    assert_bitwise(loaded.model, with_best.model)  # the two are kept apart


def test_scalar_optimizer_state_survives_as_json(store, bucket):
    """Optimizers that keep plain numbers in their state (older torch's ``step``, LBFGS's counters)."""
    state, _ = state_after("sgd", steps=1)
    state.optimizer = {
        "state": {0: {"step": 5, "exp_avg": torch.ones(8, 6)}, 3: {"n_iter": 2, "prev_loss": 0.5}},
        "param_groups": [{"params": [0, 1, 2, 3], "lr": 0.1, "betas": [0.9, 0.999]}],
    }
    checkpoints = CheckpointStore(store, f"s3://{bucket}/c")
    checkpoints.save(state)
    loaded = checkpoints.load().optimizer
    assert loaded["param_groups"] == state.optimizer["param_groups"]
    assert sorted(loaded["state"]) == [0, 3]
    assert loaded["state"][0]["step"] == 5 and torch.equal(loaded["state"][0]["exp_avg"], torch.ones(8, 6))
    assert loaded["state"][3] == {"n_iter": 2, "prev_loss": 0.5}


def test_latest_points_at_newest_and_older_epochs_are_deleted(store, bucket):
    folder = f"s3://{bucket}/job/checkpoints"
    neighbour = f"s3://{bucket}/job/checkpoints-other/epoch-0001.safetensors"
    store.put_bytes(neighbour, b"another job's checkpoint")
    checkpoints = CheckpointStore(store, folder)
    saved = {}
    for epoch in (1, 2, 3):
        state, _ = state_after("adamw", steps=epoch, epoch=epoch)
        checkpoints.save(state)
        saved[epoch] = state
        names = [o.key.rsplit("/", 1)[-1] for o in store.list(folder)]
        assert names == [f"epoch-{epoch:04d}.safetensors", POINTER]
        pointer = json.loads(store.get_bytes(f"{folder}/{POINTER}"))
        assert pointer["file"] == f"epoch-{epoch:04d}.safetensors" and pointer["epoch"] == epoch

    loaded = checkpoints.load()
    assert loaded.epoch == 3
    assert_bitwise(loaded.model, saved[3].model)
    assert store.exists(neighbour)  # a folder whose name merely starts the same is someone else's


def test_tampered_epoch_file_is_refused(store, bucket):
    folder = f"s3://{bucket}/t"
    state, _ = state_after("sgd", steps=1)
    uri = CheckpointStore(store, folder).save(state)
    data = bytearray(store.get_bytes(uri))
    data[-1] ^= 0x01  # one bit of one weight
    store.put_bytes(uri, bytes(data))

    with pytest.raises(IntegrityError, match=f"sha256 mismatch for checkpoint {uri}"):
        CheckpointStore(store, folder).load()


def test_load_from_an_empty_folder_returns_none(store, bucket):
    assert CheckpointStore(store, f"s3://{bucket}/nothing/yet").load() is None
    store.put_bytes(f"s3://{bucket}/other/latest.json", b"{}")  # elsewhere in the bucket
    assert CheckpointStore(store, f"s3://{bucket}/nothing/yet").load() is None


def test_nothing_is_pickled(store, bucket, monkeypatch):
    folder = f"s3://{bucket}/p"
    state, _ = state_after("adamw", steps=2, best_model=clone(make_model(3).state_dict()))
    CheckpointStore(store, folder).save(state)

    objects = store.list(folder)
    assert {o.key.rsplit(".", 1)[-1] for o in objects} == {"safetensors", "json"}
    for obj in objects:
        data = store.get_bytes(obj.uri)
        if obj.key.endswith(".json"):
            json.loads(data)
        else:  # safetensors: an 8-byte little-endian header length, then a JSON header, then raw tensor bytes
            (length,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8 : 8 + length])
            assert any(k.startswith("model.") for k in header) and any(k.startswith("optim.") for k in header)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must never be unpickled")

    for module, name in [(pickle, "loads"), (pickle, "load"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    loaded = CheckpointStore(store, folder).load()
    assert_bitwise(loaded.model, state.model)


def test_a_checkpoint_above_the_multipart_threshold_goes_up_in_parts_streamed_from_disk(store, bucket):
    import re
    import tracemalloc

    from airflow_tl.storage.s3 import MULTIPART_CHUNKSIZE, MULTIPART_THRESHOLD

    weights = torch.arange(MULTIPART_THRESHOLD // 4 + 4096, dtype=torch.float32)  # just over the threshold
    state = TrainingState(
        epoch=1, fingerprint="big", model={"w": weights}, optimizer={"state": {}, "param_groups": []}, scheduler={}
    )
    folder = f"s3://{bucket}/big"
    tracemalloc.start()  # Python's heap: what safetensors.torch.save or a read() of the file would allocate
    try:
        uri = CheckpointStore(store, folder).save(state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    head = store.client.head_object(Bucket=bucket, Key=uri.split("/", 3)[3])
    assert head["ContentLength"] > MULTIPART_THRESHOLD
    parts = re.fullmatch(r'"[0-9a-f]{32}-(\d+)"', head["ETag"])  # S3's ETag of a multipart upload
    assert parts and int(parts[1]) == -(-head["ContentLength"] // MULTIPART_CHUNKSIZE)
    assert peak < MULTIPART_CHUNKSIZE, f"{peak / 2**20:.0f} MiB of Python heap for a {weights.nbytes >> 20} MiB file"
    loaded = CheckpointStore(store, folder).load()
    assert torch.equal(loaded.model["w"], weights)
