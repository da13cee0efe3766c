"""The dashboard's FastAPI app, mounted at ``/airflow-tl`` on Airflow's API server by ``plugin.py``.

Pages are rendered on the server (Jinja2, autoescaped, no scripts, no build step) from the same plain
functions as the JSON endpoints under ``/api``; ``catalog`` reads the registries. Every route needs an
authenticated Airflow user and DAG access to the model (``access``); a registry is read only when the
dashboard is configured to show it (``registries``).
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from airflow.api_fastapi.core_api.security import get_user
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_tl import __version__
from airflow_tl.dashboard import access, catalog, registries, urls
from airflow_tl.exceptions import AirflowTLError, InvalidArgumentError, ObjectNotFoundError
from airflow_tl.registry import manual
from airflow_tl.registry.store import Registry

# What the report may do inside the browser: show its own inline styles and data-URI plots, nothing else.
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
PAGE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'self'"
)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# Module level: the routes' annotations are strings (``from __future__``), resolved in this module's globals.
User = Annotated[Any, Depends(get_user)]
RegistryParam = Annotated[str, Query(description="A registry_uri the dashboard shows ([airflow_tl] registries).")]


class Action(BaseModel):
    version: str = Field(description="The version to make the champion.")
    reason: str = Field(description="Why; recorded in the history with the user's name.")
    expected_champion: str | None = Field(
        None, description="The champion the decision was made against; if it has changed since, nothing is written."
    )


@functools.cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("airflow_tl.dashboard", "templates"), autoescape=select_autoescape(default=True)
    )


@functools.cache
def _store():
    from airflow_tl import settings
    from airflow_tl.hooks.s3 import s3_store

    return s3_store(settings.get("dashboard_aws_conn_id"))


def create_app() -> FastAPI:
    app = FastAPI(
        title="airflow-tl dashboard",
        version=__version__,
        description="Models, versions, reports and champion history of the airflow-tl registries. Every endpoint "
        "needs an Airflow token (``Authorization: Bearer``, or the UI's cookie) and DAG access to the model.",
    )
    pages, api = APIRouter(include_in_schema=False), APIRouter(prefix="/api")

    def render(request: Request, template: str, user: Any, **values: Any) -> HTMLResponse:
        html = _templates().get_template(template).render(
            root=request.scope.get("root_path", ""), airflow=urls.base_path(), user=access.user_name(user),
            link=_link, **values,
        )  # fmt: skip
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_POLICY})

    # --- reading ---------------------------------------------------------------------------------

    def visible(user: Any) -> list[dict[str, Any]]:
        shown = []
        for entry in registries.configured().values():
            listing = catalog.list_registry(_store(), entry.uri)
            models = [m for m in listing.models if access.allowed(user, access.READ, _dags(entry, m))]
            shown.append({
                "uri": entry.uri, "problem": listing.problem, "models": [m.to_dict() for m in models],
                "hidden": len(listing.models) - len(models),
            })  # fmt: skip
        return shown

    def model(user: Any, registry: str, name: str, method: str = access.READ) -> catalog.ModelView:
        entry = _registry(registry)
        view = catalog.read_model(_store(), entry.uri, name)
        if view is None:
            # Whether a name exists is itself only for those who may see every model it could belong to.
            access.require(user, method, entry.dag_models.get(name, set()), f"model {name!r} of {entry.uri}")
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{entry.uri} has no model {name!r}.")
        access.require(user, method, _dags(entry, view.summary), f"model {name!r} of {entry.uri}")
        return view

    def version_detail(view: catalog.ModelView, version: str) -> dict[str, Any]:
        _check_version(version)
        rows = {row["version"]: row for row in view.rows}
        if version not in rows:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{view.summary.uri} has no complete version {version!r}.")
        from airflow_tl.models.folder import read_card

        card = read_card(_store(), rows[version]["uri"])
        return {"model": view.summary.to_dict(), "version": rows[version], "card": card.to_dict()}

    @api.get("/registries", summary="Every registry shown, with the models the user may read")
    def api_registries(user: User) -> list[dict[str, Any]]:
        return visible(user)

    @api.get("/models/{name}", summary="A model: its champion, trend and versions, newest first")
    def api_model(name: str, registry: RegistryParam, user: User) -> dict[str, Any]:
        view = model(user, registry, name)
        return {**view.summary.to_dict(), "version_rows": view.rows}

    @api.get("/models/{name}/versions/{version}", summary="One version: its metrics, run and model card")
    def api_version(name: str, version: str, registry: RegistryParam, user: User) -> dict[str, Any]:
        return version_detail(model(user, registry, name), version)

    @api.get("/models/{name}/history", summary="The champion's timeline, newest first")
    def api_history(name: str, registry: RegistryParam, user: User) -> list[dict[str, Any]]:
        return model(user, registry, name).history

    @api.get("/models/{name}/compare", summary="Two versions side by side, with the images added and removed")
    def api_compare(name: str, registry: RegistryParam, a: str, b: str, user: User) -> dict[str, Any]:
        return _compare(model(user, registry, name).summary, name, a, b)

    # --- changing the champion ------------------------------------------------------------------

    def act(request: Request, user: Any, registry: str, name: str, action: str, body: Action) -> dict[str, Any]:
        _same_origin(request)
        summary = model(user, registry, name, access.EDIT).summary
        _check_version(body.version)
        target = Registry(_store(), summary.registry_uri, name)
        try:
            return manual.set_champion(
                target, version=body.version, action=action, user=access.user_name(user), reason=body.reason,
                expected=body.expected_champion or None,
            )  # fmt: skip
        except manual.ActionRefusedError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
        except InvalidArgumentError as err:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from err

    @api.post("/models/{name}/promote", summary="Make a complete version the champion (needs DAG edit access)")
    def api_promote(request: Request, name: str, registry: RegistryParam, body: Action, user: User) -> dict[str, Any]:
        return act(request, user, registry, name, "promote", body)

    @api.post("/models/{name}/rollback", summary="Make an earlier champion the champion again (needs DAG edit access)")
    def api_rollback(request: Request, name: str, registry: RegistryParam, body: Action, user: User) -> dict[str, Any]:
        return act(request, user, registry, name, "rollback", body)

    @pages.post("/models/{name}/{action}")
    async def action_form(request: Request, name: str, action: str, registry: RegistryParam, user: User) -> Response:
        if action not in manual.ACTIONS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No action {action!r}.")
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()}
        body = Action(version=form.get("version", ""), reason=form.get("reason", ""),
                      expected_champion=form.get("expected_champion") or None)  # fmt: skip
        act(request, user, registry, name, action, body)
        history = _link(request.scope.get("root_path", ""), f"/models/{name}/history", registry=registry)
        return RedirectResponse(history, status.HTTP_303_SEE_OTHER)

    @pages.get("/", response_class=HTMLResponse)
    def models_page(request: Request, user: User) -> HTMLResponse:
        return render(request, "models.html", user, registries=visible(user), spark=sparkline)

    @pages.get("/dags/{dag_id}", response_class=HTMLResponse)
    def dag_page(request: Request, dag_id: str, user: User) -> HTMLResponse:
        shown = []
        for entry in visible(user):
            models = [m for m in entry["models"] if dag_id in m["dag_ids"]]
            shown.append({**entry, "models": models, "hidden": 0})
        return render(request, "models.html", user, registries=shown, spark=sparkline, dag_id=dag_id)

    @pages.get("/models/{name}", response_class=HTMLResponse)
    def model_page(request: Request, name: str, registry: RegistryParam, user: User) -> HTMLResponse:
        view = model(user, registry, name)
        return render(request, "model.html", user, model=view.summary.to_dict(), rows=view.rows, spark=sparkline)

    @pages.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
    def version_page(request: Request, name: str, version: str, registry: RegistryParam, user: User) -> HTMLResponse:
        view = model(user, registry, name)
        detail = version_detail(view, version)
        return render(
            request, "version.html", user, **detail,
            can_edit=access.allowed(user, access.EDIT, _dags(_registry(registry), view.summary)),
            was_champion=detail["version"]["was_champion"],
        )  # fmt: skip

    @pages.get("/models/{name}/versions/{version}/report")
    def report(name: str, version: str, registry: RegistryParam, user: User) -> Response:
        detail = version_detail(model(user, registry, name), version)
        try:
            html = _store().get_bytes(detail["version"]["report_uri"])
        except ObjectNotFoundError as err:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
        headers = {"Content-Security-Policy": REPORT_POLICY, "X-Content-Type-Options": "nosniff"}
        return Response(html, media_type="text/html; charset=utf-8", headers=headers)

    @pages.get("/models/{name}/history", response_class=HTMLResponse)
    def history_page(request: Request, name: str, registry: RegistryParam, user: User) -> HTMLResponse:
        view = model(user, registry, name)
        return render(request, "history.html", user, model=view.summary.to_dict(), events=view.history)

    @pages.get("/models/{name}/compare", response_class=HTMLResponse)
    def compare_page(request: Request, name: str, registry: RegistryParam, a: str, b: str, user: User) -> HTMLResponse:
        summary = model(user, registry, name).summary
        return render(request, "compare.html", user, model=summary.to_dict(), compared=_compare(summary, name, a, b))

    app.include_router(api)
    app.include_router(pages)

    @app.exception_handler(StarletteHTTPException)
    def refused(request: Request, err: StarletteHTTPException) -> Response:
        # JSON for the API, a page for a person; both say why.
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api") or err.status_code == 401:
            return JSONResponse({"detail": err.detail}, err.status_code, headers=getattr(err, "headers", None))
        html = (
            _templates()
            .get_template("error.html")
            .render(root=request.scope.get("root_path", ""), status=err.status_code, detail=str(err.detail))
        )
        return HTMLResponse(html, err.status_code, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.exception_handler(AirflowTLError)
    def registry_problem(request: Request, err: AirflowTLError) -> Response:
        # A registry object that cannot be read: say which, instead of a stack trace.
        return Response(f"{type(err).__name__}: {err}", status.HTTP_502_BAD_GATEWAY, media_type="text/plain")

    return app


def _registry(uri: str) -> registries.Registry:
    entry = registries.configured().get(registries.normalise(uri))
    if entry is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Registry {uri!r} is not one this dashboard shows. An administrator adds it to [airflow_tl] registries.",
        )
    return entry


def _dags(entry: registries.Registry, summary: catalog.ModelSummary) -> set[str]:
    return set(summary.dag_ids) | entry.dag_models.get(summary.name, set())


def _same_origin(request: Request) -> None:
    """A change must come from this site: a browser sends Origin with every POST, and a page of another site
    must not act with the user's cookie (which is SameSite=Lax as well)."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"Refusing a change requested from another site ({origin}).")


def _check_version(version: str) -> None:
    if not _VERSION.match(version):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{version!r} is not a version name.")


def _compare(summary: catalog.ModelSummary, name: str, a: str, b: str) -> dict[str, Any]:
    _check_version(a)
    _check_version(b)
    try:
        return catalog.compare_versions(_store(), summary.registry_uri, name, a, b)
    except catalog.VersionNotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err


def _link(root: str, path: str, **query: Any) -> str:
    return f"{root}{path}" + (f"?{urlencode(query)}" if query else "")


def sparkline(points: list[dict[str, Any]], width: int = 120, height: int = 28) -> str:
    """The ``points`` attribute of an SVG polyline of the scores (numbers only, so nothing to escape)."""
    scores = [p["score"] for p in points if isinstance(p.get("score"), int | float)]
    if len(scores) < 2:
        return ""
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    step = width / (len(scores) - 1)
    return " ".join(f"{i * step:.1f},{height - 2 - (s - low) / span * (height - 4):.1f}" for i, s in enumerate(scores))
