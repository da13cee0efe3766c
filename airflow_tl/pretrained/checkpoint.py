"""Loading third-party checkpoints without ever unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import re
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from airflow_tl.exceptions import IncompatibleWeightsError, UnsafeCheckpointError

# How torch's weights_only unpickler reports an object it will not construct.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (?P<name>[\w.]+)")
# torch's messages carry terminal escapes and advice to turn weights_only off, which we never follow.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Checkpoints often wrap the state dict in a training-state dict under one of these keys.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def load_checkpoint(path: str, *, source: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` file.

    :param path: the local file.
    :param source: where it came from, for messages; the file name in its path decides the format
        (a query string or ``#sha256=`` pin after it does not count).
    """
    if urlsplit(source).path.endswith(".safetensors"):
        try:
            return load_file(path, device="cpu")
        except SafetensorError as err:
            raise IncompatibleWeightsError(f"{source} is not a valid safetensors file: {err}.") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = _UNSAFE_GLOBAL.search(str(err))
        if needs:
            raise UnsafeCheckpointError(
                f"Refusing to load {source}: it needs the Python object {needs['name']}, and unpickling it could run "
                "arbitrary code. Only plain weights are accepted (torch.save of a state_dict, or safetensors)."
            ) from err
        raise IncompatibleWeightsError(f"{source} is not a readable PyTorch checkpoint ({_reason(err)}).") from err
    except Exception as err:  # torch's unpickler fails on non-checkpoints with all kinds of errors
        raise IncompatibleWeightsError(f"{source} is not a readable PyTorch checkpoint ({_reason(err)}).") from err
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


def _reason(err: Exception) -> str:
    text = _ANSI.sub("", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:  # keep torch's actual finding, not its boilerplate
        lines = [line for line in lines if line.startswith(("Unsupported", "Invalid", "invalid"))] or lines[-1:]
    return lines[0] if lines else type(err).__name__
