"""Redis URLs: the accepted forms, redacted in messages; Celery agrees with redis-py; JSON on every queue."""

import ssl

import pytest

from celeryconfig import celery_conf
from common.connections import redacted, verify_access, with_cert_reqs
from common.errors import SettingsError
from common.settings import Settings

TLS_URL = "rediss://atf:s3cret@127.0.0.1:6380/0?ssl_ca_certs=/tmp/ca.crt&ssl_cert_reqs=required"


def test_passwords_are_redacted():
    assert redacted("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted(TLS_URL) == "rediss://atf:***@127.0.0.1:6380/0?ssl_ca_certs=/tmp/ca.crt&ssl_cert_reqs=required"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


def test_a_bad_url_is_named_without_its_password():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"REDIS_URL": "http://user:s3cret@host/0"})
    assert "REDIS_URL" in str(info.value) and "s3cret" not in str(info.value)


@pytest.mark.parametrize("url, words", [
    ("rediss://h:6380/0?ssl_cert_reqs=CERT_REQUIRED", "ssl_cert_reqs must be one of"),
    ("redis://h:6379/0?ssl_ca_certs=/tmp/ca.crt", "not a rediss:// URL"),
])
def test_tls_options_are_checked_at_start(url, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env({"REDIS_URL": url})


def test_the_documented_tls_url_is_accepted():
    s = Settings.from_env({"REDIS_URL": TLS_URL})
    assert s.broker_url == s.result_backend == TLS_URL
    assert set(s.redis_urls()) == {"REDIS_URL", "RESULT_BACKEND", "BROKER_URL"}


def test_celery_verifies_certificates_like_redis_py():
    """A rediss:// URL without ssl_cert_reqs means `required` for Celery and kombu too (redis-py's default)."""
    assert with_cert_reqs("rediss://h:6380/0") == "rediss://h:6380/0?ssl_cert_reqs=required"
    assert with_cert_reqs("rediss://h:6380/0?ssl_ca_certs=/c") == "rediss://h:6380/0?ssl_ca_certs=/c&ssl_cert_reqs=required"
    assert with_cert_reqs("rediss://h/0?ssl_cert_reqs=none") == "rediss://h/0?ssl_cert_reqs=none"
    assert with_cert_reqs("redis://h/0") == "redis://h/0"


def test_kombu_and_the_result_backend_read_the_tls_url():
    """At the pinned versions the one URL gives kombu and Celery's backend the CA, the check and the user."""
    from celery import Celery

    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_conf(Settings(redis_url=TLS_URL)))
    conn = app.connection_for_write()
    assert conn.ssl == {"ssl_ca_certs": "/tmp/ca.crt", "ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert (conn.userid, conn.password) == ("atf", "s3cret")
    params = app.backend.connparams
    assert params["ssl_ca_certs"] == "/tmp/ca.crt" and params["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert (params["username"], params["password"]) == ("atf", "s3cret")


def test_every_celery_consumer_accepts_json_only():
    """Task queues, the remote-control mailbox (broadcasts and replies) and event receivers: JSON only."""
    from celery import Celery

    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_conf(Settings()))
    assert app.conf.accept_content == ["json"] and app.conf.result_accept_content == ["json"]
    assert set(app.control.mailbox.accept) == {"json"}
    assert set(app.events.Receiver(app.connection_for_read(), handlers={}).accept) == {"json"}


def test_an_unreachable_redis_is_not_a_settings_error():
    """Only refused credentials or certificates stop a process at start; a Redis that is down is waited for."""
    verify_access({"REDIS_URL": "redis://127.0.0.1:9/0"}, timeout=0.5)


def test_a_percent_encoded_password_reads_the_same_everywhere():
    """`@`, `:` and `/` in a password, percent-encoded, reach redis-py, kombu and the result backend decoded."""
    from celery import Celery
    from redis.connection import parse_url

    url = "redis://u:p%40ss%3Aw%2Fd@h:1/0"
    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_conf(Settings(redis_url=url)))
    assert parse_url(url)["password"] == app.connection_for_write().password == \
        app.backend.connparams["password"] == "p@ss:w/d"
    assert redacted(url) == "redis://u:***@h:1/0"
