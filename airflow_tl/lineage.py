"""What airflow-tl tasks read and write, as OpenLineage datasets (the ``openlineage`` extra).

Operators name their inputs and outputs as URIs; this module turns them into OpenLineage's naming
(https://openlineage.io/docs/spec/naming):

- ``s3://bucket/prefix/`` is namespace ``s3://bucket``, name ``prefix`` (no leading or trailing slash;
  ``/`` for the bucket itself), as the amazon provider names S3 objects. A dataset prefix is thus the
  same place as its ``x-airflow-tl-data://bucket/prefix`` Asset (``airflow_tl.pipelines.assets``).
- ``https://host/path/file.pth`` is namespace ``https://host``, name ``path/file.pth``. The spec has no
  HTTP entry; this follows its ``<scheme>://<authority>`` namespaces.
- ``torchvision://resnet18/IMAGENET1K_V1`` is namespace ``torchvision``, name ``resnet18/IMAGENET1K_V1``:
  a catalogue name, not a location, like the spec's ``bigquery`` namespace.

Userinfo, query and fragment never reach a name: they carry credentials (``redaction.py``) or a hash pin,
and are not part of what the data is. ``openlineage`` and the provider are imported only when a dataset is
built, which only the provider's listener asks for: without the extra, importing this costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_tl.exceptions import InvalidURIError
from airflow_tl.uris import parse_s3_uri

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

TAG_SOURCE = "airflow-tl"  # who set a tag, as the tags facet records it
_WEB_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class DatasetRef:
    """A URI with what OpenLineage should say about it besides its name.

    :param uri: ``s3://``, ``http(s)://`` or ``torchvision://``; anything else is left out of lineage.
    :param version: the dataset's version (a registry version such as ``v3``): OpenLineage's ``version`` facet.
    :param tags: key and value pairs for OpenLineage's ``tags`` facet (e.g. ``promoted``).
    """

    uri: str
    version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def naming(uri: object) -> tuple[str, str] | None:
    """OpenLineage's ``(namespace, name)`` for ``uri``, without its secrets; None for what is not a known location.

    :param uri: any value; only ``s3://``, ``http(s)://`` and ``torchvision://`` URIs have a name.
    """
    if not isinstance(uri, str) or "://" not in uri:
        return None
    scheme, _, rest = uri.strip().partition("://")
    scheme = scheme.lower()
    # Cut as redaction.py cuts a URL, so whatever it would mask never gets here: query and fragment, then userinfo.
    rest = rest.partition("#")[0].partition("?")[0]
    authority, _, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    path = path.strip("/")
    if scheme == "s3":
        try:
            parsed = parse_s3_uri(f"s3://{host}/{path}")
        except InvalidURIError:
            return None
        return f"s3://{parsed.bucket}", parsed.key.strip("/") or "/"
    if scheme in _WEB_SCHEMES:
        return (f"{scheme}://{host.lower()}", path or "/") if host else None
    if scheme == "torchvision":
        return ("torchvision", f"{host}/{path}".strip("/")) if host else None
    return None


def datasets(refs: Iterable[str | DatasetRef | None]) -> list[Dataset]:
    """One OpenLineage dataset per distinct location in ``refs``, in order; facets of repeats are merged.

    :param refs: URIs or ``DatasetRef``; None, and anything else without a name (``naming``), is left out.
    """
    from openlineage.client.event_v2 import Dataset

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for ref in refs:
        ref = ref if isinstance(ref, DatasetRef) else DatasetRef(ref)
        if (key := naming(ref.uri)) is not None:
            found[key] = {**_facets(ref), **found.get(key, {})}
    return [Dataset(namespace=namespace, name=name, facets=facets) for (namespace, name), facets in found.items()]


def operator_lineage(
    inputs: Iterable[str | DatasetRef | None], outputs: Iterable[str | DatasetRef | None]
) -> OperatorLineage | None:
    """What ``get_openlineage_facets_on_complete`` returns; None when the OpenLineage provider is not installed.

    :param inputs: what the task read.
    :param outputs: what it wrote.
    """
    try:
        import openlineage.client  # noqa: F401  (datasets() needs it too)
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:  # Airflow calls this only with the provider; a direct call must not fail either
        return None
    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))


def _facets(ref: DatasetRef) -> dict[str, Any]:
    from openlineage.client.facet_v2 import dataset_version_dataset, tags_dataset

    facets: dict[str, Any] = {}
    if ref.version:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=ref.version)
    if ref.tags:
        fields = [tags_dataset.TagsDatasetFacetFields(key=k, value=v, source=TAG_SOURCE) for k, v in ref.tags.items()]
        facets["tags"] = tags_dataset.TagsDatasetFacet(tags=fields)
    return facets


def registry_outputs(
    registry_uri: str, model_name: str, version: str, version_uri: str | None, *, promoted: bool
) -> list[DatasetRef]:
    """What registering (``version_uri``) and promoting ``version`` wrote: the version's folder, tagged with
    whether it was promoted, and, when it was, ``champion.json`` naming it.

    :param version_uri: the version folder when this task wrote it; None when it only promoted it (a tournament).
    """
    from airflow_tl.registry.store import CHAMPION_FILE

    tags = {"promoted": str(promoted).lower()}
    outputs = [DatasetRef(version_uri, version=version, tags=tags)] if version_uri else []
    if promoted:
        outputs.append(DatasetRef(f"{registry_uri.rstrip('/')}/{model_name}/{CHAMPION_FILE}", version=version))
    return outputs
