"""fetch_pretrained against the loopback HTTP server: credentials, plain http, full sha256 pins, redirects."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from airflow_tl.exceptions import IntegrityError, InvalidURIError, ObjectNotFoundError
from airflow_tl.models.folder import load_model_folder
from airflow_tl.pretrained.fetch import FetchSpec, fetch_pretrained
from tests.helpers import hub_file, keys_under, random_state_dict

PASSWORD = "pw-7c1e9a"
SIGNATURE = "sig-0f3b55d2"
CREDENTIAL = "AKIDEXAMPLE%2F20261129"


def _secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, SIGNATURE, CREDENTIAL, "AKIDEXAMPLE/20261129") if s in text]


def test_credentials_are_sent_and_recorded_nowhere(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict(num_classes=3))
    http_server.files[f"/hub/{name}"] = data
    http_server.basic_auth = ("reader", PASSWORD)
    http_server.query = {"X-Amz-Signature": SIGNATURE}
    host = http_server.base_url.removeprefix("http://")
    url = f"http://reader:{PASSWORD}@{host}/hub/{name}?X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}"

    result = fetch_pretrained(FetchSpec(url), store=store, output_uri=f"s3://{bucket}/out")

    token = base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    assert http_server.headers[0]["Authorization"] == f"Basic {token}"
    assert http_server.requests == [f"/hub/{name}?X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}"]
    card_text = store.get_bytes(f"s3://{bucket}/out/model.json").decode()
    expected = f"http://***@{host}/hub/{name}?X-Amz-Credential=***&X-Amz-Signature=***"
    assert json.loads(card_text)["lineage"]["source"] == expected
    assert json.loads(card_text)["lineage"]["source_lineage"] == {"url": expected}
    assert result.summary()["source"] == expected
    assert _secrets_in(card_text) == [] and _secrets_in(json.dumps(result.summary())) == []


def test_wrong_credentials_fail_without_showing_them(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict())
    http_server.files[f"/{name}"] = data
    http_server.basic_auth = ("reader", "right-password")
    url = f"{http_server.base_url.replace('://', f'://reader:{PASSWORD}@')}/{name}"
    with pytest.raises(ObjectNotFoundError) as err:
        fetch_pretrained(FetchSpec(url), store=store, output_uri=f"s3://{bucket}/out")
    assert str(err.value) == f"Cannot download http://***@{http_server.base_url[7:]}/{name}: HTTP 401 Unauthorized."
    assert keys_under(store, f"s3://{bucket}/out") == []


def test_authorization_does_not_follow_a_redirect(store, bucket, http_server, allow_http):
    name, data = hub_file(random_state_dict())
    http_server.files[f"/new/{name}"] = data
    http_server.redirects[f"/old/{name}"] = f"{http_server.base_url}/new/{name}"
    url = f"{http_server.base_url.replace('://', f'://reader:{PASSWORD}@')}/old/{name}"
    fetch_pretrained(FetchSpec(url), store=store, output_uri=f"s3://{bucket}/out")
    assert http_server.requests == [f"/old/{name}", f"/new/{name}"]
    assert "Authorization" in http_server.headers[0] and "Authorization" not in http_server.headers[1]


@pytest.mark.parametrize("source", ["hub", "mirror"])
def test_plain_http_is_refused_before_any_request(store, bucket, http_server, source):
    name, data = hub_file(random_state_dict(num_classes=1000))
    http_server.files[f"/{name}"] = data
    spec = {
        "hub": FetchSpec(f"{http_server.base_url}/{name}"),
        "mirror": FetchSpec("torchvision://resnet18/IMAGENET1K_V1", weights_mirror=http_server.base_url),
    }[source]
    with pytest.raises(InvalidURIError) as err:
        fetch_pretrained(spec, store=store, output_uri=f"s3://{bucket}/out")
    shown = f"{http_server.base_url}/{name if source == 'hub' else 'resnet18-f37072fd.pth'}"
    assert str(err.value).startswith(f"Pretrained URL '{shown}' uses plain http://, which is refused")
    assert "[airflow_tl] allow_http = True (AIRFLOW__AIRFLOW_TL__ALLOW_HTTP=True)" in str(err.value)
    assert http_server.requests == []
    assert keys_under(store, f"s3://{bucket}/out") == []


def test_a_full_sha256_pin_trusts_any_file_name(store, bucket, http_server, allow_http):
    _, data = hub_file(random_state_dict(num_classes=6))
    http_server.files["/files/weights.pth"] = data
    sha = hashlib.sha256(data).hexdigest()
    url = f"{http_server.base_url}/files/weights.pth#sha256={sha.upper()}"  # hex in either case
    result = fetch_pretrained(FetchSpec(url, architecture="resnet18"), store=store, output_uri=f"s3://{bucket}/out")
    assert http_server.requests == ["/files/weights.pth"]  # the fragment is not sent
    assert result.card.lineage["source_sha256"] == sha and result.card.num_classes == 6
    assert result.card.lineage["source"] == url


def test_a_pinned_file_named_after_an_architecture_needs_no_architecture(store, bucket, http_server, allow_http):
    _, data = hub_file(random_state_dict(num_classes=2))
    http_server.files["/resnet18.pth"] = data
    url = f"{http_server.base_url}/resnet18.pth#sha256={hashlib.sha256(data).hexdigest()}"
    result = fetch_pretrained(FetchSpec(url), store=store, output_uri=f"s3://{bucket}/out")
    state_dict, card = load_model_folder(store, f"s3://{bucket}/out")
    assert card.architecture == "resnet18" and state_dict["fc.weight"].shape == (2, 512)
    assert result.summary()["source"] == url


def test_a_full_sha256_pin_must_match_exactly(store, bucket, http_server, allow_http):
    _, data = hub_file(random_state_dict())
    http_server.files["/weights.pth"] = data
    actual = hashlib.sha256(data).hexdigest()
    pinned = actual[:8] + "0" * 56  # right prefix, wrong hash: a prefix is not enough when the full hash is given
    url = f"{http_server.base_url.replace('://', f'://reader:{PASSWORD}@')}/weights.pth?sig={SIGNATURE}"
    with pytest.raises(IntegrityError) as err:
        fetch_pretrained(
            FetchSpec(f"{url}#sha256={pinned}", architecture="resnet18"), store=store, output_uri=f"s3://{bucket}/o"
        )
    assert str(err.value) == (
        f"sha256 mismatch for http://***@{http_server.base_url[7:]}/weights.pth?sig=***#sha256={pinned}: "
        f"its #sha256= pins {pinned}, but the content hashes to {actual}. "
        "The file is corrupt or not what was published."
    )
    assert keys_under(store, f"s3://{bucket}/o") == []
