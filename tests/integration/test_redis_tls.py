"""Redis with a password, an ACL user and TLS: one `rediss://` URL serves broker, results, cache and registry.

The test makes its own CA and server certificate (openssl CLI) and starts a
real `redis-server` with `--tls-port` and `--requirepass` (and an ACL user):
the pip-installed valkey-server of the other tests is built without TLS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery

from celeryconfig import celery_conf
from common.connections import verify_access
from common.errors import SettingsError
from common.settings import Settings
from devtools.redis_server import free_port
from tests.helpers import Webapp, Worker, service_env

PASSWORD = "default-pass-" + uuid.uuid4().hex[:8]
ACL_USER, ACL_PASSWORD = "atf", "atf-pass-" + uuid.uuid4().hex[:8]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl CLI to make the test's certificates")
    files = {name: folder / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf")}
    files["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    for command in (
        ["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", files["ca.key"], "-out", files["ca.crt"],
         "-days", "2", "-subj", "/CN=atf test CA"],
        ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", files["server.key"], "-out", files["server.csr"],
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", files["server.csr"], "-CA", files["ca.crt"], "-CAkey", files["ca.key"],
         "-CAcreateserial", "-out", files["server.crt"], "-days", "2", "-extfile", files["ext.cnf"]],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return files


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A redis-server speaking only TLS, with a password for `default` and an ACL user; its URL parts."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "no redis-server binary with TLS (apt-get install redis-server)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    folder = tmp_path_factory.mktemp("tls-redis")
    certs = make_certificates(folder)
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs["server.crt"]), "--tls-key-file", str(certs["server.key"]),
         "--tls-ca-cert-file", str(certs["ca.crt"]), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
         "--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "server.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    query = f"ssl_ca_certs={certs['ca.crt']}&ssl_cert_reqs=required"
    urls = {
        "acl": f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0?{query}",
        "password": f"rediss://:{PASSWORD}@127.0.0.1:{port}/1?{query}",
        "wrong_password": f"rediss://{ACL_USER}:not-the-password@127.0.0.1:{port}/0?{query}",
        "no_ca": f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0",
    }
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
            reason = f"{binary} did not start with TLS (built without it?): {log[-500:]}"
            pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
        try:
            redis.Redis.from_url(urls["acl"], socket_connect_timeout=1).ping()
            break
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)
    yield urls
    process.terminate()
    process.wait(10)


@pytest.mark.parametrize("form", ["acl", "password"])
def test_every_client_kind_speaks_tls_with_credentials(tls_redis, form):
    """redis-py, kombu's transport (a message put and got) and Celery's result backend, from the one URL."""
    url = tls_redis[form]
    assert redis.Redis.from_url(url).ping()
    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_conf(Settings(redis_url=url)))
    with app.connection_for_write() as conn:
        box = conn.SimpleQueue(f"tls-probe-{uuid.uuid4().hex[:8]}", serializer="json")
        box.put({"hello": form})
        assert box.get(timeout=5).payload == {"hello": form}
        box.clear()
        box.close()
    app.backend.set(f"tls-probe-{form}", "stored")
    assert app.backend.get(f"tls-probe-{form}") == b"stored"


def test_wrong_password_or_unknown_ca_is_a_settings_error(tls_redis):
    """What verify_access says at start: the variable, the cause, never the password."""
    with pytest.raises(SettingsError, match="REDIS_URL.*refused") as info:
        verify_access({"REDIS_URL": tls_redis["wrong_password"]})
    assert "not-the-password" not in str(info.value)
    with pytest.raises(SettingsError, match="certificate"):
        verify_access({"REDIS_URL": tls_redis["no_ca"]})


def test_worker_and_webapp_serve_over_tls_redis(tls_redis, model_dir, log_dir):
    """End to end on the TLS Redis as an ACL user: a /predict, its cached repeat, the worker in /workers."""
    url = tls_redis["acl"]
    worker = Worker("tls", service_env(url, model_dir, preload_models="minilm"), log_dir)
    webapp = None
    try:
        worker.wait_ready()
        webapp = Webapp(service_env(url, model_dir), log_dir, "--workers", "1", "--threads", "8").wait_ready()
        body = {"model_id": "minilm", "inputs": f"over TLS {uuid.uuid4().hex}"}
        first = requests.post(webapp.url + "/predict", json=body, timeout=60)
        assert first.status_code == 200 and first.json()["cached"] is False, first.text
        again = requests.post(webapp.url + "/predict", json=body, timeout=60)
        assert again.status_code == 200 and again.json()["cached"] is True, again.text
        assert again.json()["result"] == first.json()["result"]
        workers = requests.get(webapp.url + "/workers", timeout=10).json()
        assert worker.name in str(workers)
        assert ACL_PASSWORD not in worker.log() + webapp.log_path.read_text()
    finally:
        if webapp is not None:
            webapp.stop()
        worker.stop()


def test_a_wrong_password_stops_worker_and_webapp_at_start(tls_redis, model_dir, log_dir):
    """Neither retries forever: each exits at start naming REDIS_URL, without printing the password."""
    env = service_env(tls_redis["wrong_password"], model_dir)
    worker = Worker("tls-wrong", env, log_dir)
    webapp = Webapp(env, log_dir)
    for process, log in ((worker.process, worker.log_path), (webapp.process, webapp.log_path)):
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"still running with a wrong password:\n{log.read_text()[-2000:]}") from None
        text = Path(log).read_text()
        assert code != 0 and "REDIS_URL" in text and "refused the credentials" in text, text[-2000:]
        assert "not-the-password" not in text
    worker.stop()
    webapp.stop()

