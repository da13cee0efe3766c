"""Errors about datasets, in a module of their own so every data module can raise them."""

from __future__ import annotations

from airflow_tl.exceptions import PermanentError


class DatasetError(PermanentError, ValueError):
    """A dataset whose layout, classes or images cannot be used: fixing the data, not retrying, helps."""


class DatasetChangedError(DatasetError):
    """The dataset changed between two tasks of one run, so their results would not belong together."""


class ShardError(DatasetError):
    """A shard or shard index that is missing, truncated or disagrees with the other; preparing again fixes it."""
