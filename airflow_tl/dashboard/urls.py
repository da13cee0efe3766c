"""Where the dashboard's pages are, for links from tasks and from Airflow's UI. No web imports: operators use it."""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

URL_PREFIX = "/airflow-tl"


def base_path() -> str:
    """The path Airflow's UI is served under (``[api] base_url``), '' at the root."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def version_page(registry_uri: str, model_name: str, version: str) -> str:
    """The dashboard's page of one version, as a same-origin path."""
    path = f"{base_path()}{URL_PREFIX}/models/{quote(model_name)}/versions/{quote(version)}"
    return f"{path}?{urlencode({'registry': registry_uri.strip().rstrip('/')})}"
