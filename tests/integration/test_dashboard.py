"""The dashboard on a real Airflow API server, against registries in the real S3 server: the plugin is
registered by installing the package, every endpoint needs a token and DAG access, strings from S3 are inert,
and only the configured registries can be read."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.helpers import HOSTILE


@pytest.fixture(scope="module")
def registry_uri(dashboard_registry) -> str:
    return dashboard_registry


def test_the_plugin_is_registered_by_the_package(dashboard_server):
    listed = dashboard_server.get("/api/v2/plugins", user="admin").json()
    (plugin,) = [p for p in listed["plugins"] if p["name"] == "airflow_tl"]
    views = {(v["destination"], v["url_route"]) for v in plugin["external_views"]}
    assert views == {("nav", "airflow-tl"), ("dag", "airflow-tl-dag-models")}


@pytest.mark.parametrize("path", ["/airflow-tl/", "/airflow-tl/api/registries", "/airflow-tl/models/digits"])
def test_without_a_token_every_endpoint_answers_401(dashboard_server, path):
    assert dashboard_server.get(path, user=None).status_code == 401


def test_the_models_page_shows_the_champion_and_an_unreadable_registry_as_such(dashboard_server, registry_uri):
    page = dashboard_server.get("/airflow-tl/", user="viewer")
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    html = page.text
    # The second run's head is the first's (the fit is deterministic): a tie, which keeps champion v1.
    assert f"Registry <code>{registry_uri}</code>" in html and '<td class="champion"><a href=' in html
    # The strategy DAGs' default registry (the demo bucket) does not exist in this S3: shown, with its URI.
    assert re.search(r'class="problem">s3://airflow-tl-demo/registry cannot be read', html)
    registries = dashboard_server.get("/airflow-tl/api/registries", user="viewer").json()
    (shown,) = [r for r in registries if r["uri"] == registry_uri]
    digits = next(m for m in shown["models"] if m["name"] == "digits")
    assert digits["champion"]["version"] == "v1" and digits["champion"]["dag_id"] == "tl_feature_extraction"
    assert [p["version"] for p in digits["trend"]] == ["v1", "v2"]
    assert digits["dag_ids"] == ["tl_feature_extraction"]


def test_strings_from_s3_render_inert(dashboard_server, registry_uri):
    pages = [
        "/",
        "/models/hostile",
        "/models/hostile/history",
        "/models/hostile/versions/v1",
        "/dags/tl_feature_extraction",
    ]
    for path in pages:
        html = dashboard_server.get(f"/airflow-tl{path}", user="viewer", registry=registry_uri).text
        # Shown escaped as text, or percent-encoded in a link to its DAG run; never as markup.
        assert HOSTILE not in html and ("&lt;script&gt;" in html or "%3Cscript%3E" in html), path
    html = dashboard_server.get(
        "/airflow-tl/models/hostile/compare", user="viewer", registry=registry_uri, a="v1", b="v1"
    ).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the class names of the confusion matrix


def test_a_version_page_and_its_report_served_with_a_policy_that_forbids_scripts(dashboard_server, registry_uri):
    page = dashboard_server.get("/airflow-tl/models/digits/versions/v1", user="viewer", registry=registry_uri)
    assert page.status_code == 200 and "tl_feature_extraction" in page.text and "resnet18" in page.text
    assert 'method="post"' not in page.text  # a viewer is offered no action
    admins = dashboard_server.get("/airflow-tl/models/digits/versions/v2", user="admin", registry=registry_uri).text
    assert "<h2>Promote v2</h2>" in admins and 'name="expected_champion" value="v1"' in admins
    report = dashboard_server.get("/airflow-tl/models/digits/versions/v1/report", user="viewer", registry=registry_uri)
    assert report.status_code == 200 and report.headers["content-type"] == "text/html; charset=utf-8"
    assert report.headers["content-security-policy"].startswith("default-src 'none'; img-src data:")
    assert 'src="data:image/png;base64,' in report.text
    model = dashboard_server.get("/airflow-tl/api/models/digits", user="viewer", registry=registry_uri).json()
    rows = [(row["version"], row["decision"]) for row in model["version_rows"]]
    assert rows == [("v2", "kept"), ("v1", "promoted")]
    compared = dashboard_server.get(
        "/airflow-tl/api/models/digits/compare", user="viewer", registry=registry_uri, a="v1", b="v2"
    ).json()
    assert compared["data"]["splits"]["train"]["added"] == []  # the same images both times


def test_a_registry_outside_the_setting_is_refused(dashboard_server, store, bucket):
    elsewhere = f"s3://{bucket}/registry"
    for path in ("/airflow-tl/models/digits", "/airflow-tl/api/models/digits"):
        answer = dashboard_server.get(path, user="admin", registry=elsewhere)
        assert answer.status_code == 403 and "not one this dashboard shows" in answer.text


def test_unknown_models_and_versions_are_404_with_the_reason(dashboard_server, registry_uri):
    answer = dashboard_server.get("/airflow-tl/api/models/nothing", user="viewer", registry=registry_uri)
    assert answer.status_code == 404 and "has no model 'nothing'" in answer.json()["detail"]
    answer = dashboard_server.get("/airflow-tl/api/models/digits/versions/v9", user="viewer", registry=registry_uri)
    assert answer.status_code == 404 and "has no complete version 'v9'" in answer.json()["detail"]


def test_the_openapi_document_lists_the_json_endpoints(dashboard_server):
    schema = json.loads(dashboard_server.get("/airflow-tl/openapi.json", user="viewer").text)
    assert {"/api/registries", "/api/models/{name}", "/api/models/{name}/history"} <= set(schema["paths"])


def test_promote_and_roll_back_need_edit_access_and_leave_history(dashboard_server, registry_uri):
    server, path = dashboard_server, "/airflow-tl/api/models/digits"

    def champion() -> tuple[str, int]:
        history = server.get(f"{path}/history", user="viewer", registry=registry_uri).json()
        return server.get(path, user="viewer", registry=registry_uri).json()["champion"]["version"], len(history)

    def post(action: str, user: str, **body) -> object:
        return httpx.post(f"{server.url}{path}/{action}", params={"registry": registry_uri}, json=body,
                          headers={"Authorization": f"Bearer {server.token(user)}"}, timeout=60)  # fmt: skip

    before = champion()
    assert before[0] == "v1"
    refused = post("promote", "viewer", version="v2", reason="looks better", expected_champion="v1")
    assert refused.status_code == 403 and "needs DAG edit access to tl_feature_extraction" in refused.text
    missing = post("promote", "admin", version="v9", reason="why", expected_champion="v1")
    assert missing.status_code == 409 and "versions/v9 is not a complete version" in missing.json()["detail"]
    assert champion() == before  # nothing was written

    promoted = post("promote", "admin", version="v2", reason="checked by hand", expected_champion="v1")
    assert promoted.status_code == 200, promoted.text
    assert champion() == ("v2", before[1] + 1)
    (latest, *_) = server.get(f"{path}/history", user="viewer", registry=registry_uri).json()
    assert (latest["user"], latest["action"], latest["reason"]) == ("admin", "promote", "checked by hand")

    # The version page's form: from another site refused; from the page itself, done and shown in the history.
    form = {"version": "v1", "reason": "back to v1", "expected_champion": "v2"}
    headers = {"Authorization": f"Bearer {server.token('admin')}", "Origin": "https://elsewhere.example"}
    forged = httpx.post(f"{server.url}/airflow-tl/models/digits/rollback", params={"registry": registry_uri},
                        data=form, headers=headers, timeout=60)  # fmt: skip
    assert forged.status_code == 403 and "another site" in forged.text and champion()[0] == "v2"
    headers["Origin"] = server.url
    done = httpx.post(f"{server.url}/airflow-tl/models/digits/rollback", params={"registry": registry_uri},
                      data=form, headers=headers, timeout=60)  # fmt: skip
    assert done.status_code == 303 and "/airflow-tl/models/digits/history?registry=" in done.headers["location"]
    assert champion() == ("v1", before[1] + 2)
    page = server.get("/airflow-tl/models/digits/history", user="viewer", registry=registry_uri).text
    assert "rolled back by hand" in page and "back to v1" in page and "admin" in page


def test_the_evaluate_task_links_to_its_version_page(dashboard_server, registry_uri):
    runs = dashboard_server.get("/api/v2/dags/tl_feature_extraction/dagRuns", user="admin", order_by="logical_date")
    links = []
    for run in runs.json()["dag_runs"]:
        path = f"/api/v2/dags/tl_feature_extraction/dagRuns/{run['dag_run_id']}/taskInstances/evaluate/links"
        links.append(dashboard_server.get(path, user="admin").json()["extra_links"].get("Model version"))
    pages = [f"/airflow-tl/models/digits/versions/{v}?registry={registry_uri.replace('/', '%2F').replace(':', '%3A')}"
             for v in ("v1", "v2")]  # fmt: skip
    assert [link for link in links if link and "/models/digits/" in link] == pages, (runs.json(), links)
    page = dashboard_server.get(pages[0].split("?")[0], user="viewer", registry=registry_uri)
    assert page.status_code == 200 and "digits · v1" in page.text
