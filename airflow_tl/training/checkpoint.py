"""Training checkpoints in S3 that a retried task resumes from, with nothing pickled.

Each epoch writes ``epoch-NNNN.safetensors`` (model, best model, optimizer tensors, torch RNG),
then replaces ``latest.json`` (everything else, plus the file's sha256) in one PUT. A task killed
at any moment leaves ``latest.json`` naming the last complete checkpoint.

The epoch file goes through a local temporary file both ways, so a large checkpoint is never held in
memory twice, and goes up as a multipart upload above ``MULTIPART_THRESHOLD``. Only a missing
``latest.json`` means "no checkpoint": any other error reading it (access denied, S3 still failing after
the retries) fails the task, rather than starting over at epoch 1 and overwriting the pointer.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from airflow_tl.exceptions import IntegrityError, ObjectNotFoundError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.storage.tensors import read_tensors, write_tensors

log = logging.getLogger(__name__)

POINTER = "latest.json"


@dataclass
class TrainingState:
    """Everything needed to continue training after ``epoch`` completed epochs."""

    epoch: int
    fingerprint: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    # Exact, unlike the history's rounded figures: a resumed run must pick the same best epoch as an
    # uninterrupted one even when two epochs' losses agree to five decimals.
    best_val_loss: float | None = None
    best_model: dict[str, torch.Tensor] | None = None  # None: the best is the current model
    torch_rng: torch.Tensor | None = None
    python_rng: Any = None


class CheckpointStore:
    def __init__(self, store: S3Store, folder: str) -> None:
        self.store = store
        self.folder = folder.rstrip("/")

    def save(self, state: TrainingState) -> str:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.model.items()}
        if state.best_model is not None:
            tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in state.best_model.items()}
        optimizer_meta = _split_optimizer(state.optimizer, tensors)
        if state.torch_rng is not None:
            tensors["rng.torch"] = state.torch_rng
        name = f"epoch-{state.epoch:04d}.safetensors"
        sha256 = write_tensors(self.store, f"{self.folder}/{name}", tensors)
        pointer = {
            "file": name,
            "sha256": sha256,
            "epoch": state.epoch,
            "fingerprint": state.fingerprint,
            "optimizer": optimizer_meta,
            "scheduler": state.scheduler,
            "history": state.history,
            "best_epoch": state.best_epoch,
            "best_val_loss": state.best_val_loss,
            "has_best_model": state.best_model is not None,
            "python_rng": state.python_rng,
        }
        self.store.put_bytes(f"{self.folder}/{POINTER}", json.dumps(pointer).encode(), content_type="application/json")
        for old in self.store.list(self.folder):
            if old.key.rsplit("/", 1)[-1].startswith("epoch-") and not old.key.endswith(name):
                self.store.delete(old.uri)
        return f"{self.folder}/{name}"

    def load(self) -> TrainingState | None:
        uri = f"{self.folder}/{POINTER}"
        try:
            raw = self.store.get_bytes(uri)
        except ObjectNotFoundError:
            return None
        try:
            pointer = json.loads(raw)
        except ValueError as err:
            # Written in one PUT, so never half-written: damaged. Starting over would overwrite it unseen.
            raise IntegrityError(
                f"Checkpoint pointer {uri} is not valid JSON ({err}); delete it to train from epoch 1."
            ) from err
        uri = f"{self.folder}/{pointer['file']}"
        tensors = read_tensors(self.store, uri, pointer["sha256"], name=f"checkpoint {uri}")
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        return TrainingState(
            epoch=pointer["epoch"],
            fingerprint=pointer["fingerprint"],
            model=model,
            optimizer=_join_optimizer(pointer["optimizer"], tensors),
            scheduler=pointer["scheduler"],
            history=pointer["history"],
            best_epoch=pointer["best_epoch"],
            best_val_loss=pointer.get("best_val_loss"),
            best_model=best if pointer["has_best_model"] else None,
            torch_rng=tensors.get("rng.torch"),
            python_rng=pointer["python_rng"],
        )


def _split_optimizer(state_dict: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Optimizer tensors go to safetensors under ``optim.<param>.<name>``; the rest stays JSON."""
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def python_rng_state() -> list:
    return json.loads(json.dumps(random.getstate()))


def restore_python_rng(state: Any) -> None:
    if state is not None:
        version, internal, gauss = state
        random.setstate((version, tuple(internal), gauss))
