"""Loading third-party checkpoints without ever unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import zipfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from airflow_tl.exceptions import IncompatibleWeightsError, UnsafeCheckpointError

# Checkpoints often wrap the state dict in a training-state dict under one of these keys.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def load_checkpoint(path: str, *, source: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` file."""
    if source.endswith(".safetensors"):
        try:
            return load_file(path, device="cpu")
        except SafetensorError as err:
            raise IncompatibleWeightsError(f"{source} is not a valid safetensors file: {err}.") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"Refusing to load {source}: it holds objects other than tensors, and loading it would run their "
            f"pickled code ({first_line}). Only plain weights are accepted "
            "(torch.save of a state_dict, or safetensors)."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise IncompatibleWeightsError(f"{source} is not a readable PyTorch checkpoint: {err}.") from err
    return _flatten(obj, source)


def _flatten(obj: object, source: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj):
        raise IncompatibleWeightsError(
            f"{source} does not contain a state dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}."
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return {k: v.contiguous() for k, v in obj.items()}


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )
