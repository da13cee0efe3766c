"""Choosing a device: what is accepted, what falls back (only auto), and the CPU's placement changing nothing."""

from __future__ import annotations

import pytest
import torch

from airflow_tl.devices import DeviceUnavailableError, choose_device, cpu, parse_device, placement, to_host
from airflow_tl.exceptions import InvalidArgumentError, PermanentError


@pytest.mark.parametrize(
    ("spec", "gpus", "expected"),
    [
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda:0"),
        ("cpu", 2, "cpu"),
        (" CUDA ", 1, "cuda:0"),
        ("cuda:1", 2, "cuda:1"),
    ],
)
def test_a_device_argument_names_the_device_torch_gets(spec, gpus, expected):
    assert choose_device(spec, gpus) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cpu:0", "auto:1", "cuda:-1", "", None, 0, "mps"])
def test_other_values_are_refused_naming_what_is_accepted(spec):
    with pytest.raises(InvalidArgumentError, match=r"accepts only 'auto', 'cpu', 'cuda' and 'cuda:N'"):
        parse_device(spec)


def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(DeviceUnavailableError, match=r"'cuda'.*no CUDA device.*device='auto'") as raised:
        choose_device("cuda", 0)
    assert isinstance(raised.value, PermanentError)  # no retry can add a GPU
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:2'.*2 CUDA device\(s\): cuda:0 to cuda:1"):
        choose_device("cuda:2", 2)


def test_auto_is_a_gpu_where_there_is_one_else_the_cpu_in_float32():
    chosen = placement("auto")
    if torch.cuda.is_available():
        assert chosen.describe()["device"] == "cuda:0" and chosen.describe()["precision"] in ("bfloat16", "float16")
    else:
        assert chosen.describe() == {"device": "cpu", "name": "CPU", "precision": "float32"}
        with pytest.raises(DeviceUnavailableError):
            placement("cuda")


def test_the_cpu_placement_leaves_models_and_batches_as_they_are():
    chosen = cpu()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    assert chosen.batch(x, y) == (x, y)
    model = torch.nn.Conv2d(3, 4, 3)
    assert chosen.model(model) is model and model.weight.is_contiguous()
    assert chosen.grad_scaler() is None
    with chosen.autocast():
        assert model(x).dtype == torch.float32


def test_weights_leave_a_device_as_plain_contiguous_cpu_tensors():
    weights = {"w": torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last), "b": torch.ones(3)}
    host = to_host(weights)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in host.values())
    assert torch.equal(host["w"], weights["w"])
