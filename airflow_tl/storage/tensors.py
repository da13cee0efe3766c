"""Tensors in S3 as safetensors files, never pickled: written through a local file (streamed from disk, multipart
when large) and read back the same way, checked against the sha256 recorded when they were written."""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from airflow_tl.exceptions import IntegrityError
from airflow_tl.storage.s3 import S3Store
from airflow_tl.uris import S3URI


def write_tensors(
    store: S3Store, uri: str | S3URI, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Upload ``tensors`` as a safetensors file at ``uri``; returns the file's sha256."""
    return store.upload_written(uri, lambda path: save_file(tensors, path, metadata=metadata))


def read_tensors(store: S3Store, uri: str | S3URI, sha256: str, *, name: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at ``uri``, which must hash to ``sha256``; ``name`` says what it is."""
    with store.downloaded(uri) as (path, actual):
        if actual != sha256:
            raise IntegrityError(
                f"sha256 mismatch for {name}: expected {sha256}, the file hashes to {actual}. It is incomplete or "
                "was modified after it was written."
            )
        try:
            return load_file(path, device="cpu")
        except SafetensorError as err:
            raise IntegrityError(f"{name} is not a valid safetensors file: {err}.") from err
