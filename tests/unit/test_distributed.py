"""Pure pieces of data-parallel training: the batch slices, the devices, BatchNorm over the global batch, and
what a failed rank becomes in the task."""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from airflow_tl.data.loader import CorruptImagesError, strided
from airflow_tl.devices import DeviceUnavailableError, process_devices
from airflow_tl.exceptions import InvalidArgumentError, PermanentError
from airflow_tl.training.distributed import SOLO, World, sync_batchnorm
from airflow_tl.training.launch import Nodes, TrainingProcessError, explain


@pytest.mark.parametrize(("count", "batch", "size"), [(45, 16, 2), (10, 4, 3), (7, 8, 8), (64, 64, 4)])
def test_each_global_batch_is_dealt_out_to_every_rank_once(count, batch, size):
    shards = [strided(count, batch, (rank, size)) for rank in range(size)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    for step in range(len(shards[0])):
        taken = sorted(i for s in shards for i in s[step])
        assert taken == list(range(step * batch, min((step + 1) * batch, count)))
        assert max(len(s[step]) for s in shards) - min(len(s[step]) for s in shards) <= 1


def test_a_last_batch_smaller_than_the_ranks_leaves_some_an_empty_step():
    assert strided(5, 4, (1, 2)) == [[1, 3], []]


def test_process_devices_one_gpu_per_process_and_only_auto_falls_back():
    assert process_devices("auto", 2, 0) == "cpu" and process_devices("cpu", 4, 8) == "cpu"
    assert process_devices("auto", 2, 2) == "cuda" and process_devices("cuda", 2, 4) == "cuda"
    with pytest.raises(DeviceUnavailableError, match="num_processes=4 on CUDA needs 4 GPUs, .* has 2"):
        process_devices("cuda", 4, 2)
    with pytest.raises(DeviceUnavailableError):
        process_devices("cuda", 2, 0)
    with pytest.raises(InvalidArgumentError, match="'cuda:1', which names one GPU"):
        process_devices("cuda:1", 2, 2)


def test_nodes_need_an_endpoint_and_a_positive_timeout():
    with pytest.raises(InvalidArgumentError, match="nnodes=2 needs rdzv_endpoint"):
        Nodes(2)
    with pytest.raises(InvalidArgumentError, match="rdzv_timeout"):
        Nodes(2, "127.0.0.1:29400", timeout_s=0)
    with pytest.raises(InvalidArgumentError, match="nnodes"):
        Nodes(0)


def test_one_process_is_its_own_world():
    x = torch.ones(3)
    assert SOLO.main and not SOLO.distributed and SOLO.shard() is None
    assert SOLO.all_sum(x) is x and SOLO.wrap(model := torch.nn.Linear(2, 2)) is model


@pytest.fixture
def group(tmp_path):
    """A one-process gloo group: collectives run for real, over one rank."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield World(0, 2)  # claims two ranks, so the BatchNorm conversion happens; the sums are over one
    dist.destroy_process_group()


def test_global_batchnorm_computes_what_batchnorm_does_over_the_same_images(group):
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    synced = sync_batchnorm(torch.nn.Sequential(*(m for m in _copy(plain))), group, torch.device("cpu"))
    assert type(synced[1]).__name__ == "GlobalBatchNorm" and synced.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(6, 3, 8, 8) * 3 + 1
    for _ in range(3):  # the running statistics follow over steps
        out_plain, out_synced = plain(x), synced(x)
        out_plain.square().mean().backward()
        out_synced.square().mean().backward()
    assert torch.allclose(out_plain, out_synced, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), synced.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    for name, value in plain.state_dict().items():
        assert torch.allclose(value.float(), synced.state_dict()[name].float(), atol=1e-5), name
    synced.eval()
    plain.eval()
    assert torch.allclose(plain(x), synced(x), atol=1e-5)  # eval mode: the running statistics


def test_a_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_parameters(group):
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    model[0].weight.requires_grad_(False)
    model.eval()
    weight = model[0].weight
    converted = sync_batchnorm(model, group, torch.device("cpu"))
    assert converted[0].weight is weight and not converted[0].training and not weight.requires_grad


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _failure(pid: int, exitcode: int):
    return SimpleNamespace(pid=pid, exitcode=exitcode)


def _record(folder, rank, module, type_, message, permanent, when):
    record = {"rank": rank, "module": module, "type": type_, "message": message, "permanent": permanent}
    (folder / f"rank-{rank}.json").write_text(json.dumps(record | {"time": when}))


def test_an_error_of_ours_comes_back_as_its_own_class_naming_the_rank(tmp_path):
    _record(tmp_path, 0, "builtins", "RuntimeError", "gloo: connection closed by peer", False, 1.0)
    _record(tmp_path, 1, "airflow_tl.data.loader", "CorruptImagesError", "s3://b/x.png cannot be decoded", True, 2.0)
    err = explain({0: _failure(10, 1), 1: _failure(11, 1)}, tmp_path, 2)
    assert isinstance(err, CorruptImagesError) and isinstance(err, PermanentError)
    assert str(err) == "Training process rank 1 of 2 failed: s3://b/x.png cannot be decoded"


def test_a_rank_killed_by_a_signal_is_the_cause_not_the_peer_that_lost_it(tmp_path):
    _record(tmp_path, 0, "builtins", "RuntimeError", "gloo: connection closed by peer", False, 1.0)
    err = explain({0: _failure(10, 1), 1: _failure(11, -signal.SIGKILL)}, tmp_path, 2)
    assert isinstance(err, TrainingProcessError) and not isinstance(err, PermanentError)
    assert "rank 1 of 2 (pid 11) was killed by SIGKILL" in str(err) and "resumes from the last checkpoint" in str(err)


def test_ranks_the_launcher_stopped_are_not_blamed(tmp_path):
    _record(tmp_path, 1, "torch.serialization", "UnpicklingError", "weights only", True, 1.0)
    err = explain({0: _failure(10, -signal.SIGTERM), 1: _failure(11, 1)}, tmp_path, 2)
    assert type(err) is PermanentError and "rank 1 of 2 failed: weights only (UnpicklingError)" in str(err)
    err = explain({0: _failure(10, -signal.SIGTERM), 1: _failure(11, 3)}, tmp_path / "none", 2)
    assert isinstance(err, TrainingProcessError) and "rank 1 of 2 (pid 11) exited with code 3" in str(err)
