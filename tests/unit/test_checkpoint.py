"""Loading third-party checkpoints: plain weights only, never arbitrary unpickling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from airflow_tl.exceptions import IncompatibleWeightsError, UnsafeCheckpointError
from airflow_tl.pretrained.checkpoint import load_checkpoint


def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
        "bn.running_mean": torch.randn(4, generator=generator),
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.weight": torch.randn(2, 4, generator=generator).t(),  # not contiguous
    }


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
        assert loaded[key].dtype == value.dtype, key
        assert loaded[key].device.type == "cpu"
        assert loaded[key].is_contiguous(), key


def saved(tmp_path: Path, obj: object, name: str = "model.pth") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


class Evil:
    """Pickles into a call of open(marker, 'w'): unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- plain state dicts ------------------------------------------------------------------------------------------


def test_loads_a_saved_state_dict(tmp_path: Path) -> None:
    assert_same(load_checkpoint(saved(tmp_path, weights()), source="model.pth"), weights())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd},
        lambda sd: {"model_state_dict": sd},
        lambda sd: {"module": sd},
        lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}, "arch": "resnet18"},
        lambda sd: {"epoch": 3, "model": {"state_dict": sd}},
    ],
    ids=["state_dict", "model", "model_state_dict", "module", "training-state", "nested"],
)
def test_unwraps_training_state(tmp_path: Path, wrap) -> None:
    assert_same(load_checkpoint(saved(tmp_path, wrap(weights())), source="model.pth"), weights())


@pytest.mark.parametrize(
    "wrap", [lambda sd: sd, lambda sd: {"state_dict": sd}], ids=["bare", "wrapped"]
)  # fmt: skip
def test_strips_data_parallel_prefix(tmp_path: Path, wrap) -> None:
    prefixed = {f"module.{k}": v for k, v in weights().items()}
    assert_same(load_checkpoint(saved(tmp_path, wrap(prefixed)), source="ddp.pth"), weights())


def test_keeps_module_prefix_unless_every_key_has_it(tmp_path: Path) -> None:
    mixed = {"module.conv.weight": torch.ones(1), "fc.weight": torch.zeros(1)}
    assert list(load_checkpoint(saved(tmp_path, mixed), source="m.pth")) == ["module.conv.weight", "fc.weight"]


def test_loads_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"  # the source name, not the path, decides the format
    save_file({k: v.contiguous() for k, v in weights().items()}, str(path))
    loaded = load_checkpoint(str(path), source="https://h.example/net-0123abcd.safetensors")
    assert_same(dict(sorted(loaded.items(), key=lambda kv: list(weights()).index(kv[0]))), weights())


def test_bad_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(IncompatibleWeightsError) as err:
        load_checkpoint(str(path), source="s3://b/x.safetensors")
    assert str(err.value).startswith("s3://b/x.safetensors is not a valid safetensors file: ")


# --- unsafe and unreadable files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [lambda evil: evil, lambda evil: {"state_dict": {"conv.weight": torch.ones(1)}, "hook": evil}],
    ids=["bare", "inside-a-checkpoint"],
)
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, wrap) -> None:
    marker = tmp_path / "pwned"
    path = saved(tmp_path, wrap(Evil(str(marker))), "evil.pth")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path, source="https://h.example/evil-0123abcd.pth")
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith("Refusing to load https://h.example/evil-0123abcd.pth: it needs the Python object ")
    assert "torch.save of a state_dict, or safetensors" in message
    assert "weights_only" not in message and "\x1b" not in message  # none of torch's advice to turn safety off


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK\x03\x04" + b"\x00" * 100,  # a broken zip, as torch.save writes them
        b"\x80\x02K\x05.",  # a pickled int: the legacy format, with no magic number
        # torch's unpickler fails on these with IndexError or "Unsupported operand": not checkpoints, not attacks.
        bytes(random.Random(0).randrange(256) for _ in range(4096)),
        b"this is not a checkpoint at all",
        b"<html><body><h1>404 Not Found</h1></body></html>",
        b'{"weights": [1, 2, 3]}',
    ],
    ids=["empty", "broken-zip", "legacy-int", "random-bytes", "text", "html", "json"],
)
def test_garbage_is_incompatible_weights(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(data)
    with pytest.raises(IncompatibleWeightsError) as err:
        load_checkpoint(str(path), source="s3://b/garbage.pth")
    assert str(err.value).startswith("s3://b/garbage.pth ")


@pytest.mark.parametrize(
    ("obj", "found"),
    [
        ([1, 2, 3], "list"),
        (torch.ones(3), "Tensor"),
        ({}, "dict"),
        ({"state_dict": {}}, "dict"),
        ({"epoch": 3, "lr": 0.1}, "dict"),
        ({"conv.weight": torch.ones(1), "epoch": 3}, "dict"),
        ({1: torch.ones(1)}, "dict"),
    ],
    ids=["list", "tensor", "empty", "empty-wrapped", "no-tensors", "mixed", "int-keys"],
)
def test_non_state_dict_is_incompatible_weights(tmp_path: Path, obj: object, found: str) -> None:
    with pytest.raises(IncompatibleWeightsError) as err:
        load_checkpoint(saved(tmp_path, obj), source="s3://b/m.pth")
    assert str(err.value) == (
        f"s3://b/m.pth does not contain a state dict (a mapping of parameter names to tensors); found {found}."
    )
