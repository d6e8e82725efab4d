"""Access rules at the HTTP level (webapp/auth.py): tokens, the loopback rule, JSON-only POSTs."""

import pytest

from common.errors import SettingsError
from common.settings import Settings
from tests.helpers import assert_error, make_client
from webapp.auth import ADMIN, INFERENCE, Tokens, from_loopback

API, OTHER_API, ADMIN_TOKEN = "api-token-1", "api-token-2", "admin-token-9"
BODY = {"model_id": "minilm", "inputs": "x"}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def guarded(model_dir):
    """Both token settings on; no worker is alive, so a request past the checks gets 503 no_workers."""
    return make_client(model_dir, workers=[], api_tokens=(API, OTHER_API), admin_token=ADMIN_TOKEN)


def test_tokens_tell_each_role():
    tokens = Tokens((API, OTHER_API), ADMIN_TOKEN)
    assert tokens.role_of(API) == INFERENCE and tokens.role_of(OTHER_API) == INFERENCE
    assert tokens.role_of(ADMIN_TOKEN) == ADMIN
    for wrong in (None, "", "api-token", API + "x", API.upper(), ADMIN_TOKEN[:-1]):
        assert tokens.role_of(wrong) is None, wrong


def test_loopback_is_the_peer_address_only():
    for addr in ("127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"):
        assert from_loopback(addr), addr
    for addr in (None, "", "10.0.0.1", "192.0.2.2", "::ffff:10.0.0.1", "fd00::2", "localhost", "127.0.0.1, 10.0.0.1"):
        assert not from_loopback(addr), addr


@pytest.mark.parametrize("method,path", [("post", "/predict"), ("post", "/jobs"), ("get", "/jobs/abc"),
                                         ("delete", "/jobs/abc")])
def test_inference_endpoints_need_an_api_token(guarded, method, path):
    """With API_TOKENS set: none or an unknown token is 401 with a challenge; an API or the admin token passes."""
    send = getattr(guarded, method)
    kwargs = {"json": BODY} if method == "post" else {}
    missing = send(path, **kwargs)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="inference"'
    for header in (bearer("nope"), {"Authorization": f"Basic {API}"}, {"Authorization": API}):
        wrong = send(path, headers=header, **kwargs)
        assert_error(wrong, 401, "unauthorized")
    assert 'error="invalid_token"' in send(path, headers=bearer("nope"), **kwargs).headers["WWW-Authenticate"]
    for token in (API, OTHER_API, ADMIN_TOKEN):
        passed = send(path, headers=bearer(token), **kwargs)
        assert passed.status_code not in (401, 403), passed.data  # 503: Redis is closed in these tests


def test_inference_is_open_without_api_tokens(model_dir):
    client = make_client(model_dir, workers=[], admin_token=ADMIN_TOKEN)
    assert_error(client.post("/predict", json=BODY), 503, "no_workers")


@pytest.mark.parametrize("path", ["/models/load", "/models/unload", "/models/switch"])
def test_admin_endpoints_need_the_admin_token(guarded, path):
    """An API token is known but not enough (403); none or an unknown token is 401; the admin token passes."""
    body = {"model_id": "minilm", "source": "minilm"} if path.endswith("switch") else {"model_id": "minilm"}
    missing = guarded.post(path, json=body)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="admin"')
    assert_error(guarded.post(path, json=body, headers=bearer("nope")), 401, "unauthorized")
    assert_error(guarded.post(path, json=body, headers=bearer(API)), 403, "forbidden")
    passed = guarded.post(path, json=body, headers=bearer(ADMIN_TOKEN))
    assert passed.status_code not in (401, 403, 415), passed.data


def test_options_only_lists_methods(guarded):
    response = guarded.options("/predict")
    assert response.status_code == 200 and "POST" in response.headers["Allow"]


def test_open_endpoints_stay_open(guarded):
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs", "/models",
                 "/workers"):
        response = guarded.get(path)
        assert response.status_code not in (401, 403), (path, response.status_code)


def test_no_token_appears_in_answers(guarded):
    """Neither the errors, /health, /workers nor the OpenAPI document carry a token."""
    answers = [guarded.post("/predict", json=BODY, headers=bearer("nope")),
               guarded.post("/models/load", json={"model_id": "minilm"}, headers=bearer(API)),
               guarded.post("/predict", json=BODY, headers=bearer(API)),
               guarded.get("/health"), guarded.get("/workers"), guarded.get("/openapi.json")]
    for response in answers:
        text = response.get_data(as_text=True) + str(response.headers)
        for token in (API, OTHER_API, ADMIN_TOKEN):
            assert token not in text


@pytest.mark.parametrize("addr", ["10.1.2.3", "192.168.0.7", "2001:db8::1"])
def test_admin_without_a_token_answers_loopback_only(model_dir, addr):
    """ADMIN_TOKEN unset: a remote address is 403 naming ADMIN_TOKEN, whatever X-Forwarded-For says."""
    client = make_client(model_dir, workers=[])
    for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "::1"}, bearer(API)):
        response = client.post("/models/load", json={"model_id": "minilm"}, headers=headers,
                               environ_base={"REMOTE_ADDR": addr})
        assert_error(response, 403, "forbidden")
        assert "ADMIN_TOKEN" in response.get_json()["error"]["message"]
    for local in ("127.0.0.1", "::1"):
        response = client.post("/models/load", json={"model_id": "minilm"}, environ_base={"REMOTE_ADDR": local})
        assert_error(response, 503, "no_workers")  # past the check


def test_admin_token_works_from_anywhere(guarded):
    response = guarded.post("/models/load", json={"model_id": "minilm"}, headers=bearer(ADMIN_TOKEN),
                            environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert_error(response, 503, "no_workers")


@pytest.mark.parametrize("path", ["/predict", "/jobs", "/models/load", "/models/unload", "/models/switch"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp", "text/json"])
def test_posts_that_are_not_json_are_415(model_dir, path, content_type):
    """A body a web page could post cross-site without a preflight is refused before anything runs."""
    client = make_client(model_dir, workers=[])
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, data=b'{"model_id": "minilm", "inputs": "x"}', headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/problem+json"])
def test_json_media_types_are_accepted(model_dir, content_type):
    client = make_client(model_dir, workers=[])
    response = client.post("/predict", data=b'{"model_id": "minilm", "inputs": "x"}',
                           headers={"Content-Type": content_type})
    assert_error(response, 503, "no_workers")  # past the check


def test_unknown_routes_and_methods_keep_their_errors(model_dir):
    client = make_client(model_dir, workers=[])
    assert_error(client.post("/nowhere", data=b"x", headers={"Content-Type": "text/plain"}), 404, "not_found")
    assert_error(client.post("/health", data=b"x", headers={"Content-Type": "text/plain"}), 405,
                 "method_not_allowed")


def test_token_is_checked_before_the_media_type(guarded):
    """An anonymous caller learns nothing past the 401."""
    response = guarded.post("/predict", data=b"x", headers={"Content-Type": "text/plain"})
    assert_error(response, 401, "unauthorized")


def test_token_settings_are_parsed_and_never_shown():
    settings = Settings.from_env({"API_TOKENS": f" {API}, ,{OTHER_API} ", "ADMIN_TOKEN": ADMIN_TOKEN})
    assert settings.api_tokens == (API, OTHER_API) and settings.admin_token == ADMIN_TOKEN
    for text in (repr(settings), str(settings)):
        assert API not in text and OTHER_API not in text and ADMIN_TOKEN not in text
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"API_TOKENS": "good-token,sécret-token"})
    assert "API_TOKENS" in str(bad.value) and "sécret" not in str(bad.value)
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"ADMIN_TOKEN": "two words"})
    assert "ADMIN_TOKEN" in str(bad.value) and "words" not in str(bad.value)


@pytest.mark.parametrize("value,ok", [("100/minute", True), ("10 per second", True), ("5/hour; 100/day", True),
                                      ("1 per 2 minutes", True), ("100", False), ("lots/minute", False),
                                      ("10/fortnight", False)])
def test_rate_limit_setting_is_checked(value, ok):
    if ok:
        assert Settings.from_env({"RATE_LIMIT": value}).rate_limit
    else:
        with pytest.raises(SettingsError, match="RATE_LIMIT"):
            Settings.from_env({"RATE_LIMIT": value})


def test_openapi_declares_the_bearer_scheme(guarded, model_dir):
    """Swagger UI shows Authorize: a bearer scheme, required by the guarded operations only."""
    doc = guarded.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    paths = doc["paths"]
    for path, method in (("/predict", "post"), ("/jobs", "post"), ("/jobs/{job_id}", "get"),
                         ("/jobs/{job_id}", "delete"), ("/models/load", "post"), ("/models/switch", "post")):
        assert paths[path][method]["security"] == [{"bearer": []}], path
        assert "401" in paths[path][method]["responses"]
    assert "403" in paths["/models/unload"]["post"]["responses"]
    assert "415" in paths["/predict"]["post"]["responses"]
    for path in ("/health", "/metrics", "/models", "/workers"):
        assert paths[path]["get"]["security"] == [], path
    open_doc = make_client(model_dir, workers=[]).get("/openapi.json").get_json()
    assert open_doc["paths"]["/predict"]["post"]["security"] == []
    assert open_doc["paths"]["/models/load"]["post"]["security"] == []
    assert "403" in open_doc["paths"]["/models/load"]["post"]["responses"]  # the loopback rule
