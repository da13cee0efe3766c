"""Where a task's tensors live: the device, its precision, and how batches reach it.

``device`` is ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Only ``auto``
falls back: asking for CUDA on a machine without it is an error, never a silent run on the CPU.

On CUDA, forward passes run under autocast: bfloat16 where the GPU supports it, else float16 with a
gradient scaler, since float16 gradients underflow without one. Convolutional networks take
``channels_last``, the layout tensor cores read fastest. Batches are copied from pinned host memory
without blocking, so the host prepares the next batch (the loader's threads decode meanwhile) while the GPU
computes. On the CPU nothing changes: float32, the default layout, plain copies.

Weights leave a device as CPU tensors (``to_host``): checkpoints and model folders do not depend on where
they were trained, so a run started on a GPU can resume on the CPU and the reverse.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_tl.exceptions import InvalidArgumentError, PermanentError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceUnavailableError(PermanentError):
    """The device asked for is not on this machine (no CUDA, or fewer GPUs than its index)."""


def parse_device(spec: Any) -> tuple[str, int | None]:
    """``("auto" | "cpu" | "cuda", index or None)`` for a device argument; an error naming what is accepted."""
    match = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise InvalidArgumentError(
            f"Argument device accepts only 'auto', 'cpu', 'cuda' and 'cuda:N'. Provided value: {spec!r}."
        )
    kind, index = match.group(1), match.group(2)
    return kind, int(index) if index is not None else None


def choose_device(spec: Any, cuda_devices: int) -> str:
    """The torch device string for ``spec`` on a machine with ``cuda_devices`` GPUs.

    Pure logic, so it is tested without a GPU; ``placement`` asks torch how many there are.
    """
    kind, index = parse_device(spec)
    if kind == "auto":
        return "cuda:0" if cuda_devices else "cpu"
    if kind == "cpu":
        return "cpu"
    if not cuda_devices:
        raise DeviceUnavailableError(
            f"Argument device is {spec!r}, but this machine has no CUDA device (torch sees none). "
            "Use device='auto' to run on the CPU where no GPU is present."
        )
    index = index or 0
    if index >= cuda_devices:
        raise DeviceUnavailableError(
            f"Argument device is {spec!r}, but this machine has {cuda_devices} CUDA device(s): cuda:0 to "
            f"cuda:{cuda_devices - 1}."
        )
    return f"cuda:{index}"


def process_devices(spec: Any, processes: int, cuda_devices: int) -> str:
    """``"cpu"`` or ``"cuda"`` for ``processes`` training processes on one machine: on CUDA, each takes its own
    GPU (local rank r on ``cuda:r``), so there must be as many. ``auto`` falls back to the CPU only without GPUs."""
    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and not cuda_devices):
        return "cpu"
    if index is not None:
        raise InvalidArgumentError(
            f"Argument device is {spec!r}, which names one GPU, but num_processes={processes} gives each process "
            f"its own GPU (cuda:0 to cuda:{processes - 1}): use device='cuda' or 'auto'."
        )
    if cuda_devices < processes:
        raise DeviceUnavailableError(
            f"num_processes={processes} on CUDA needs {processes} GPUs, one per process, but this machine has "
            f"{cuda_devices}. Lower num_processes, or use device='cpu'."
        )
    return "cuda"


@dataclass(frozen=True)
class Placement:
    """A device and how to compute on it; ``describe()`` is what the log and the model card say."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: float32 throughout
    channels_last: bool = False
    name: str = "CPU"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return {None: "float32"}.get(self.amp_dtype, str(self.amp_dtype).removeprefix("torch."))

    def describe(self) -> dict[str, Any]:
        """What the card records under ``training.device``: where, on what, in which precision."""
        return {"device": str(self.device), "name": self.name, "precision": self.precision}

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` on this device, in the layout its convolutions run fastest in here."""
        import torch

        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors on this device: from pinned memory without blocking on CUDA, images channels-last."""
        import torch

        if not self.is_cuda:
            return tensors
        moved = []
        for t in tensors:
            t = t.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            moved.append(t)
        return tuple(moved)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: autocast on CUDA, nothing on the CPU."""
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler when gradients are float16 (bfloat16 has float32's range and needs none)."""
        import torch

        if self.amp_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def synchronize(self) -> None:
        """Wait for queued GPU work, so a timing covers it."""
        import torch

        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def cpu() -> Placement:
    """The CPU in float32: what plain-Python callers get when they do not choose."""
    import torch

    return Placement(torch.device("cpu"))


def placement(spec: Any = "auto") -> Placement:
    """Where to compute for the argument ``device``, checked against this machine's GPUs."""
    import torch

    chosen = choose_device(spec, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if chosen == "cpu":
        result = Placement(torch.device("cpu"))
    else:
        device = torch.device(chosen)
        bf16 = torch.cuda.is_bf16_supported()
        result = Placement(
            device,
            amp_dtype=torch.bfloat16 if bf16 else torch.float16,
            channels_last=True,
            name=torch.cuda.get_device_name(device),
        )
    log.info("Computing on %s (%s), %s (device=%r)", result.device, result.name, result.precision, spec)
    return result


def placement_for(spec: Any, processes: int) -> Placement:
    """``placement(spec)`` for one process; for several, where they compute: the CPU, or CUDA (``cuda:0``
    stands for it; process r takes ``cuda:r``), checked against this machine's GPUs as ``process_devices``."""
    if processes == 1:
        return placement(spec)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind = process_devices(spec, processes, gpus)
    where = "a GPU of its own" if kind == "cuda" else "the CPU"
    log.info("%d processes, each on %s (device=%r)", processes, where, spec)
    return placement("cuda:0" if kind == "cuda" else "cpu")


def to_host(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as contiguous CPU tensors in the default layout: what model folders and checkpoints hold."""
    import torch

    return {k: v.detach().to("cpu").contiguous(memory_format=torch.contiguous_format) for k, v in weights.items()}
