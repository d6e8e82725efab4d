"""`make run`: the whole system on one machine, stopped with Ctrl-C.

Finds or starts Redis, builds the demo models (first run only), starts one
worker per visible GPU (or one CPU worker), the webapp on :8000 and Flower
on :5555 (both on HOST, default 127.0.0.1; Flower behind a login, see
devtools/credentials.py), prefixes each one's output with its name, and stops everything
it started when interrupted or when any part dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from common.connections import redacted
from devtools.credentials import flower_basic_auth, login_hint
from devtools.processes import PYTHON, flower_argv, wait_or_kill, webapp_argv, worker_argv
from devtools.redis_server import find_or_start, persistence_of

HOST = os.environ.get("HOST") or "127.0.0.1"  # what the API and Flower bind
# Where this machine reaches them (HOST may be a wildcard or one interface).
LOCAL = "127.0.0.1" if HOST in ("0.0.0.0", "::", "localhost") else HOST
WEB_PORT = int(os.environ.get("WEB_PORT", "8000"))
FLOWER_PORT = int(os.environ.get("FLOWER_PORT", "5555"))


def say(text: str) -> None:
    print(f"[run] {text}", flush=True)


def gpu_count() -> int:
    """Visible CUDA devices, asked in a subprocess so this one stays light."""
    out = subprocess.run(
        [PYTHON, "-c", "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"],
        capture_output=True, text=True,
    )
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def worker_plan(gpus: int) -> list[tuple[str, str]]:
    """(worker name prefix, WORKER_DEVICE) per worker: one per visible GPU, else one on the CPU."""
    if gpus <= 0:
        return [("cpu", "cpu")]
    return [(f"cuda{i}", f"cuda:{i}") for i in range(gpus)]


class Child:
    """One process of the stack, its output prefixed with its name."""

    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            sys.stdout.write(f"[{self.name}] {line}")
            sys.stdout.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        wait_or_kill(self.process, timeout)


def wait_healthy(children: list[Child], timeout: float) -> dict | None:
    """The API's /health once it answers and Flower accepts connections; None if not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not all(c.alive() for c in children):
            return None
        try:
            socket.create_connection((LOCAL, FLOWER_PORT), timeout=2).close()
            with urllib.request.urlopen(f"http://{LOCAL}:{WEB_PORT}/health", timeout=2) as resp:
                return json.load(resp)
        except OSError:
            time.sleep(0.5)
    return None


def main() -> int:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PRELOAD_MODELS", "minilm,sentiment_model")
    env.setdefault("MODEL_DIR", os.path.abspath("models"))
    try:
        flower_auth, kept_in = flower_basic_auth(env)
    except ValueError as exc:
        say(str(exc))
        return 2
    url, embedded, how = find_or_start(env, persist_dir=os.path.abspath(os.path.join(".data", "redis")))
    env["REDIS_URL"] = url
    say(f"Redis: {how} ({redacted(url)})")
    risk = persistence_of(url)
    if risk:
        say(f"warning: {risk} (see the README's reliability section)")

    children: list[Child] = []
    stopping = threading.Event()

    def stop_all(*_args) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        say(f"demo models in {env['MODEL_DIR']} (built on the first run only)")
        subprocess.run([PYTHON, "-m", "model_store", "build-demo"], env=env, check=True)

        plan = worker_plan(gpu_count())
        devices = [device for _, device in plan]
        for name, device in plan:
            worker_env = dict(env, WORKER_DEVICE=device)
            if device.startswith("cuda"):
                worker_env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            children.append(Child(f"worker-{name}", worker_argv(f"{name}@%h", env.get("LOG_LEVEL", "info").lower()),
                                  worker_env))
        children.append(Child("web", webapp_argv(f"{HOST}:{WEB_PORT}"), env))
        children.append(Child("flower", flower_argv(FLOWER_PORT),
                              dict(env, FLOWER_BASIC_AUTH=flower_auth, FLOWER_ADDRESS=HOST)))
        say(f"started {len(devices)} worker(s) on {', '.join(devices)}, the webapp and Flower; waiting for /health")

        health = None
        deadline = time.monotonic() + 300
        while not stopping.is_set() and time.monotonic() < deadline and health is None:
            health = wait_healthy(children, 2)
            if health is not None and health.get("status") != "ok":
                health = None
            if not all(c.alive() for c in children):
                break
        if health is not None:
            say("ready:")
            shown = "localhost" if HOST in ("127.0.0.1", "localhost") else HOST
            say(f"  API      http://{shown}:{WEB_PORT}   (docs: http://{shown}:{WEB_PORT}/docs)")
            say(f"  Flower   http://{shown}:{FLOWER_PORT}   (login: {login_hint(flower_auth, kept_in)})")
            if HOST not in ("127.0.0.1", "localhost", "::1") and not env.get("ADMIN_TOKEN"):
                say(f"  warning: HOST={HOST} serves other machines; set API_TOKENS and ADMIN_TOKEN (SECURITY.md)")
            say(f"  try:     curl -s localhost:{WEB_PORT}/predict -H 'Content-Type: application/json' "
                "-d '{\"model_id\": \"minilm\", \"inputs\": \"Hello, world!\"}'")
            say("  Ctrl-C stops everything")
        while not stopping.is_set():
            dead = [c for c in children if not c.alive()]
            if dead:
                say(f"{dead[0].name} exited with {dead[0].process.returncode}; stopping everything")
                return 1
            stopping.wait(0.5)
        return 0
    finally:
        say("stopping")
        for child in reversed(children):
            child.stop()
        for child in reversed(children):
            child.wait(30)
        if embedded is not None:
            embedded.stop()
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
