"""The errors airflow-tl raises. Each message names the problem and the object (URI, Param, class).

Two families, because Airflow treats them differently:

- ``AirflowTLError`` is worth a retry: an S3 endpoint that kept failing after the client's own retries,
  a registry that was busy. Airflow retries the task as its ``retries`` say.
- ``PermanentError`` is not: bad data, bad Params, a hash mismatch, unknown classes, an unsafe file, an
  object that does not exist or may not be read. It is also an ``AirflowFailException``, so the task
  fails at once instead of repeating the same failure after minutes of back-off.

They subclass ValueError or LookupError where that is what they mean, so plain-Python callers can
catch them naturally.
"""

from __future__ import annotations

from airflow.exceptions import AirflowException
from airflow.sdk.exceptions import AirflowFailException


class AirflowTLError(AirflowException):
    """Base class of every airflow-tl error; on its own, one that a retry may fix."""


class PermanentError(AirflowTLError, AirflowFailException):
    """An error no retry can fix: the task fails at once, without Airflow's retries."""


class InvalidURIError(PermanentError, ValueError):
    """A URI is malformed, uses a scheme that is not supported where it was given, or is not allowed."""


class ObjectNotFoundError(PermanentError, LookupError):
    """An S3 bucket or object, or a downloadable file, does not exist."""


class AccessDeniedError(PermanentError):
    """The credentials in use may not read or write an object; retrying with the same ones cannot help."""


class IntegrityError(PermanentError):
    """Content does not match the sha256 it was published with."""


class UnsafeCheckpointError(PermanentError):
    """A checkpoint could not be loaded without unpickling arbitrary objects."""


class UnknownArchitectureError(PermanentError, ValueError):
    """An architecture name that torchvision does not know."""


class InvalidModelCardError(PermanentError, ValueError):
    """A model card (model.json) is missing fields or contradicts itself or its weights."""


class IncompatibleWeightsError(PermanentError, ValueError):
    """Weights that do not fit the architecture they are loaded into."""


class InvalidArgumentError(PermanentError, ValueError):
    """An operator or function argument outside its allowed values."""
