"""The errors airflow-tl raises. Each message names the problem and the object (URI, Param, class).

They subclass AirflowException so a task fails with our message as-is, and ValueError or
LookupError where that is what they mean, so plain-Python callers can catch them naturally.
"""

from __future__ import annotations

from airflow.exceptions import AirflowException


class AirflowTLError(AirflowException):
    """Base class of every airflow-tl error."""


class InvalidURIError(AirflowTLError, ValueError):
    """A URI is malformed or uses a scheme that is not supported where it was given."""


class ObjectNotFoundError(AirflowTLError, LookupError):
    """An S3 bucket or object, or a downloadable file, does not exist."""


class IntegrityError(AirflowTLError):
    """Content does not match the sha256 it was published with."""


class UnsafeCheckpointError(AirflowTLError):
    """A checkpoint could not be loaded without unpickling arbitrary objects."""


class UnknownArchitectureError(AirflowTLError, ValueError):
    """An architecture name that torchvision does not know."""


class InvalidModelCardError(AirflowTLError, ValueError):
    """A model card (model.json) is missing fields or contradicts itself or its weights."""


class IncompatibleWeightsError(AirflowTLError, ValueError):
    """Weights that do not fit the architecture they are loaded into."""


class InvalidArgumentError(AirflowTLError, ValueError):
    """An operator or function argument outside its allowed values."""
