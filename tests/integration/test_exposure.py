"""Who can reach what, as a new user starts it: loopback by default, Flower behind a login.

Each test starts the real processes the way the README does (gunicorn with
gunicorn.conf.py, `celery -A tasks flower`, `python -m devtools.stack` for
`make run`) and checks what a user, or anyone else on the network, would meet.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from devtools.processes import PYTHON, ROOT
from devtools.redis_server import free_port
from tests.helpers import service_env, wait_until

CELERY = os.path.join(os.path.dirname(PYTHON), "celery")  # the command the README gives, not `python -m`


def listening(pid: int) -> set[str]:
    """Addresses the process and its children listen on."""
    root = psutil.Process(pid)
    out = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            out |= {c.laddr.ip for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return out


def status_of(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_answering(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            status_of(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered:\n{log.read_text()}")


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("host, expected", [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])
def test_the_api_listens_on_loopback_unless_host_says_otherwise(redis_url, model_dir, tmp_path, host, expected):
    port = free_port()
    env = service_env(redis_url, model_dir, web_port=port, web_concurrency=1)
    env.pop("WEB_BIND", None)
    env.pop("HOST", None)
    if host is not None:
        env["HOST"] = host
    log = tmp_path / "web.log"
    web = start([PYTHON, "-m", "gunicorn", "webapp:create_app()"], env, log)
    try:
        wait_answering(f"http://127.0.0.1:{port}/health", web, log)
        assert listening(web.pid) == expected
    finally:
        stop(web)


def test_flower_asks_for_a_login_it_generated_and_kept_private(redis_url, tmp_path):
    port = free_port()
    kept = tmp_path / "secrets" / "flower-credentials"
    env = service_env(redis_url, tmp_path, flower_credentials_file=kept)
    for name in ("FLOWER_BASIC_AUTH", "HOST", "FLOWER_ADDRESS", "PYTHONPATH"):  # as a user starts it
        env.pop(name, None)
    log = tmp_path / "flower.log"
    flower = start([CELERY, "-A", "tasks", "flower", f"--port={port}"], env, log)
    try:
        wait_answering(f"http://127.0.0.1:{port}/", flower, log)
        assert listening(flower.pid) == {"127.0.0.1"}
        assert kept.stat().st_mode & 0o777 == 0o600
        user_password = kept.read_text().strip()
        assert re.fullmatch(r"admin:\S{20,}", user_password)
        assert status_of(f"http://127.0.0.1:{port}/api/workers") == 401
        assert status_of(f"http://127.0.0.1:{port}/api/workers", "admin:wrong") == 401
        assert status_of(f"http://127.0.0.1:{port}/api/workers", user_password) == 200
        assert user_password.split(":", 1)[1] not in log.read_text()  # told where it is, not what it is
    finally:
        stop(flower)

    # FLOWER_BASIC_AUTH, Flower's own setting, replaces the generated login.
    env["FLOWER_BASIC_AUTH"] = "alice:correct-horse"
    flower = start([CELERY, "-A", "tasks", "flower", f"--port={port}"], env, log)
    try:
        wait_answering(f"http://127.0.0.1:{port}/", flower, log)
        assert status_of(f"http://127.0.0.1:{port}/api/workers", "alice:correct-horse") == 200
        assert status_of(f"http://127.0.0.1:{port}/api/workers", user_password) == 401
    finally:
        stop(flower)


def test_make_run_prints_how_to_log_in_to_flower(redis_url, model_dir, tmp_path):
    """`python -m devtools.stack` (what `make run` starts): ready, loopback only, Flower's login printed."""
    web_port, flower_port = free_port(), free_port()
    kept = tmp_path / "flower-credentials"
    env = service_env(redis_url, model_dir, preload_models="tiny-ner", web_port=web_port, flower_port=flower_port,
                      flower_credentials_file=kept, web_concurrency=1)
    for name in ("FLOWER_BASIC_AUTH", "HOST", "FLOWER_ADDRESS", "WEB_BIND", "PYTHONPATH"):  # as `make run` does
        env.pop(name, None)
    stack = subprocess.Popen([PYTHON, "-m", "devtools.stack"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(stack.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("Ctrl-C stops everything" in line for line in lines):
            assert stack.poll() is None, "".join(lines)
            time.sleep(0.2)
        out = "".join(lines)
        login = re.search(r"Flower\s+http://localhost:(\d+)\s+\(login: user 'admin', password: cat (\S+)\)", out)
        assert login, out
        assert int(login.group(1)) == flower_port and Path(login.group(2)) == kept
        assert status_of(f"http://127.0.0.1:{flower_port}/api/workers") == 401
        assert status_of(f"http://127.0.0.1:{flower_port}/api/workers", kept.read_text().strip()) == 200
        assert listening(stack.pid) <= {"127.0.0.1"}  # the API and Flower (Redis is the test's)
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
    # The reader thread may still be on the last lines when the process has exited.
    wait_until(lambda: "[run] stopped" in "".join(lines), timeout=10)
