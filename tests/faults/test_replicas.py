"""Model placements (`PUT /models/<id>/placement`): real workers converge on N replicas, or pinned workers.

One cluster for the module (a private Redis, three `celery -A tasks worker`
processes at HEARTBEAT_S=0.5, a gunicorn webapp with ADMIN_TOKEN set).
Loading a model takes 10-30 s on a busy 2-core machine (its calibration),
so the tests go on from the state the one before left, each first putting
the placement it starts from (at once when it is already there), then
polling for the state it expects, bounded. The assigner's lock and fence
are tested on a Redis of their own, from many threads at once.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import pytest
import redis
import requests

from common.assignment import ASSIGN_LOCK_KEY, Assigner
from common.placement import MODEL_PLACEMENTS_KEY, ModelPlacement, ModelPlacements, Placement, placement_key
from common.protocol import WORKERS_KEY
from devtools.redis_server import EmbeddedRedis
from tests.faults.conftest import Cluster
from tests.helpers import PYTHON, ROOT, wait_until

HEARTBEAT_S = 0.5
ADMIN = {"Authorization": "Bearer admin-secret"}
# Dead after 3 missed beats, reaped, re-assigned on the next beat, then loaded and calibrated: the load
# dominates (10-30 s here while other work runs); each test prints what it took.
CONVERGE_S = 90


@pytest.fixture(scope="module")
def c(model_dir, tmp_path_factory, request):
    """The module's cluster; the end of every process's log is printed if a test of the module failed."""
    cluster = Cluster(model_dir, tmp_path_factory.mktemp("replicas"), heartbeat_s=HEARTBEAT_S)
    failed_before = request.session.testsfailed
    try:
        for name in ("w1", "w2", "w3"):
            cluster.worker(name)
        cluster.app = cluster.webapp(admin_token="admin-secret", api_tokens="infer-token")
        for process in (*cluster.workers, cluster.app):
            process.wait_ready()
        yield cluster
    finally:
        cluster.close(request.session.testsfailed > failed_before)


def put(c, model_id: str, headers=ADMIN, **body) -> requests.Response:
    return requests.put(f"{c.app.url}/models/{model_id}/placement", json=body, headers=headers, timeout=60)


def serving(c, model_id: str) -> list[str]:
    """The live workers (by their registry entry, of their current process) that serve `model_id`."""
    out = []
    for w in c.workers:
        entry = w.entry() if w.alive() else None
        if entry and entry.get("pid") == w.process.pid and model_id in entry.get("models", {}):
            out.append(w.name)
    return sorted(out)


def placement_shown(c, model_id: str) -> dict:
    models = requests.get(f"{c.app.url}/models", timeout=30).json()["models"]
    return next(m for m in models if m["model_id"] == model_id)["placement"]


def converged(c, model_id: str, count: int) -> bool:
    shown = placement_shown(c, model_id)
    return len(serving(c, model_id)) == count and bool(shown and shown["converged"])


def steady(c, model_id: str, count: int, seconds: float = 2.5) -> None:
    """Five heartbeats and more of exactly `count` workers serving it: no overshoot, no flapping."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = serving(c, model_id)
        assert len(now) == count, f"{now} serve {model_id}; {count} should"
        time.sleep(0.1)


def live_worker(c, name: str):
    return next(w for w in reversed(c.workers) if w.name == name)


def test_two_replicas_over_three_workers(c):
    """replicas=2 over 3 live workers: exactly 2 serve it within a few heartbeats, and it stays so."""
    response = put(c, "tiny-ner", replicas=2)
    assert response.status_code == 200, response.text
    assigned = response.json()["placement"]["assigned_to"]
    assert len(assigned) == 2 and response.json()["placement"]["replicas"] == 2
    t0 = time.monotonic()
    took = wait_until(lambda: converged(c, "tiny-ner", 2), CONVERGE_S, step=0.2) - t0
    assert serving(c, "tiny-ner") == assigned
    steady(c, "tiny-ner", 2)
    shown = placement_shown(c, "tiny-ner")
    assert shown["serving_on"] == assigned and shown["converged"] is True
    print(f"2 replicas served {took:.1f} s after the PUT")


def test_a_killed_holder_is_replaced_and_stays_replaced_when_it_returns(c):
    """kill -9 of a holder: another live worker takes its place within a few heartbeats; back, it is not a 3rd."""
    assert put(c, "tiny-ner", replicas=2, wait=CONVERGE_S).json()["placement"]["converged"]
    victim = live_worker(c, serving(c, "tiny-ner")[0])
    victim.kill()
    t0 = time.monotonic()
    took = wait_until(lambda: len(serving(c, "tiny-ner")) == 2 and converged(c, "tiny-ner", 2), CONVERGE_S,
                      step=0.2) - t0
    assert victim.name not in serving(c, "tiny-ner")
    print(f"replaced {took:.1f} s after the kill (HEARTBEAT_S={HEARTBEAT_S}: dead after 3 missed beats)")
    c.respawn(victim).wait_ready()
    steady(c, "tiny-ner", 2)
    assert converged(c, "tiny-ner", 2)


def test_a_joining_worker_takes_its_share(c):
    """replicas=3 with 2 live workers: both serve it, not converged; a 3rd worker joins and loads it."""
    leaving = live_worker(c, "w3@test")
    leaving.stop()
    wait_until(lambda: leaving.name not in {json.loads(v)["name"] for v in c.redis.hgetall(WORKERS_KEY).values()},
               10)
    put(c, "tiny-ner", replicas=3)
    wait_until(lambda: len(serving(c, "tiny-ner")) == 2, CONVERGE_S, step=0.2)
    shown = placement_shown(c, "tiny-ner")
    assert shown["converged"] is False and len(shown["assigned_to"]) == 2
    t0 = time.monotonic()
    c.respawn(leaving).wait_ready()
    took = wait_until(lambda: converged(c, "tiny-ner", 3), CONVERGE_S, step=0.2) - t0
    print(f"the joining worker served it {took:.1f} s after it was started")


def test_lowering_replicas_trims_and_an_extra_holder_is_trimmed(c):
    """replicas 3 -> 1: two workers unload it; a worker made to hold it besides (an admin CLI load) is trimmed."""
    assert put(c, "tiny-ner", replicas=3, wait=CONVERGE_S).json()["placement"]["converged"]
    put(c, "tiny-ner", replicas=1)
    wait_until(lambda: converged(c, "tiny-ner", 1), CONVERGE_S, step=0.2)
    steady(c, "tiny-ner", 1)
    (holder,) = serving(c, "tiny-ner")
    other = next(w.name for w in c.workers if w.alive() and w.name != holder)
    Placement(c.redis).want(other, "tiny-ner")  # what `celery control load_model` records on that worker
    wait_until(lambda: sum("tiny-ner" in (Placement(c.redis).of(w) or {}) for w in (holder, other)) == 1,
               CONVERGE_S, step=0.1)
    wait_until(lambda: converged(c, "tiny-ner", 1), CONVERGE_S, step=0.2)
    steady(c, "tiny-ner", 1)


def test_pinned_workers(c):
    """workers=[one worker, a worker not running]: that one serves it, nobody else; the absent one is shown."""
    assert put(c, "tiny-ner", replicas=1, wait=CONVERGE_S).json()["placement"]["converged"]
    (holder,) = serving(c, "tiny-ner")
    pinned = next(w.name for w in c.workers if w.alive() and w.name != holder)
    response = put(c, "tiny-ner", workers=[pinned, "later@test"])
    assert response.status_code == 200, response.text
    assert response.json()["placement"]["not_live"] == ["later@test"]
    t0 = time.monotonic()
    took = wait_until(lambda: serving(c, "tiny-ner") == [pinned] and placement_shown(c, "tiny-ner")["converged"],
                      CONVERGE_S, step=0.2) - t0
    steady(c, "tiny-ner", 1)
    assert Placement(c.redis).of("later@test") == {"tiny-ner": None}  # it loads it when it starts
    print(f"moved to the pinned worker in {took:.1f} s")


def test_delete_unloads_everywhere_and_admin_loads_of_placed_models_are_refused(c):
    """A placed model's /models/load and /models/unload are 409; PUT replicas 0 (or DELETE) unloads it everywhere."""
    if ModelPlacements(c.redis).of("tiny-ner") is None:
        assert put(c, "tiny-ner", replicas=1, wait=CONVERGE_S).json()["placement"]["converged"]
    for action in ("load", "unload"):
        refused = requests.post(f"{c.app.url}/models/{action}", json={"model_id": "tiny-ner"}, headers=ADMIN,
                                timeout=30)
        assert refused.status_code == 409 and refused.json()["error"]["type"] == "placement_managed"
        assert "PUT /models/tiny-ner/placement" in refused.json()["error"]["message"]
    response = put(c, "tiny-ner", replicas=0)
    assert response.status_code == 200 and response.json()["placement"] is None and response.json()["removed"]
    wait_until(lambda: serving(c, "tiny-ner") == [], CONVERGE_S, step=0.2)
    assert placement_shown(c, "tiny-ner") is None and not c.redis.hexists(MODEL_PLACEMENTS_KEY, "tiny-ner")
    assert all("tiny-ner" not in (Placement(c.redis).of(w.name) or {}) for w in c.workers)
    gone = requests.delete(f"{c.app.url}/models/tiny-ner/placement", headers=ADMIN, timeout=30)
    assert gone.status_code == 200 and gone.json()["removed"] is False


@pytest.mark.parametrize("body, field, words", [
    ({}, "replicas", "either replicas"),
    ({"replicas": 1, "workers": ["w1@test"]}, "replicas", "not both"),
    ({"replicas": -1}, "replicas", "between 0 and 1000"),
    ({"replicas": 1_000_000}, "replicas", "between 0 and 1000"),
    ({"replicas": "2"}, "replicas", "whole number"),
    ({"replicas": 2.5}, "replicas", "whole number"),
    ({"replicas": True}, "replicas", "whole number"),
    ({"workers": []}, "workers", "list of 1 to 1000"),
    ({"workers": "w1@test"}, "workers", "list of 1 to 1000"),
    ({"workers": ["w1 test"]}, "workers", "not a worker name"),
    ({"workers": ["w1@test", "w1@test"]}, "workers", "twice"),
    ({"replicas": 1, "task": "image-to-text"}, "task", "not a served task"),
    ({"replicas": 1, "nodes": 3}, "nodes", "unknown field"),
    ({"replicas": 1, "wait": 1e9}, "wait", "wait must be"),
])
def test_bad_bodies_are_422_naming_the_field(c, body, field, words):
    response = put(c, "tiny-ner", **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == field and words in error["message"], error


def test_bad_requests_unknown_models_and_auth(c):
    url = f"{c.app.url}/models/tiny-ner/placement"
    assert requests.put(url, data=b"{nope", headers={**ADMIN, "Content-Type": "application/json"}).status_code == 400
    assert requests.put(url, data=b'{"replicas": 1}', headers={**ADMIN, "Content-Type": "text/plain"}
                        ).status_code == 415
    assert requests.put(url, json=[1], headers=ADMIN).status_code == 422
    ghost = put(c, "ghost", replicas=1)
    assert ghost.status_code == 404 and ghost.json()["error"]["type"] == "model_not_found"
    assert requests.delete(f"{c.app.url}/models/ghost/placement", headers=ADMIN).status_code == 404
    assert put(c, "tiny-ner", headers={}, replicas=1).status_code == 401
    assert put(c, "tiny-ner", headers={"Authorization": "Bearer infer-token"}, replicas=1).status_code == 403
    assert requests.delete(url).status_code == 401
    assert not c.redis.hexists(MODEL_PLACEMENTS_KEY, "tiny-ner")  # nothing refused was recorded
    doc = requests.get(f"{c.app.url}/openapi.json").json()
    operation = doc["paths"]["/models/{model_id}/placement"]["put"]
    assert operation["security"] == [{"bearer": []}]
    assert {"401", "403", "404", "415", "422"} <= set(operation["responses"])
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"replicas", "workers", "task", "wait"}


def cli(c, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "model_store", *args], cwd=ROOT, capture_output=True, text=True,
                          env=c.env(), timeout=60)


def test_the_cli_places_shows_and_removes(c):
    """`python -m model_store place|placements|unplace`: the same desired state as HTTP."""
    out = cli(c, "place", "tiny-fill-mask", "--replicas", "1")
    assert out.returncode == 0, out.stderr
    assert "tiny-fill-mask" in out.stdout and "1 replicas" in out.stdout
    wait_until(lambda: converged(c, "tiny-fill-mask", 1), CONVERGE_S, step=0.2)
    table = cli(c, "placements").stdout
    row = next(line for line in table.splitlines() if line.startswith("tiny-fill-mask"))
    assert row.split()[-1] == "yes" and serving(c, "tiny-fill-mask")[0] in row
    for bad, words in ((["place", "tiny-fill-mask", "--replicas", "-1"], "between 0 and 1000"),
                       (["place", "ghost", "--replicas", "1"], "not in the store"),
                       (["place", "tiny-fill-mask", "--workers", "a b"], "not a worker name"),
                       (["place", "tiny-fill-mask", "--replicas", "1", "--task", "nope"], "--task")):
        refused = cli(c, *bad)
        assert refused.returncode == 2 and words in refused.stderr, (bad, refused.stderr)
    assert cli(c, "unplace", "tiny-fill-mask").returncode == 0
    wait_until(lambda: serving(c, "tiny-fill-mask") == [], CONVERGE_S, step=0.2)
    assert placement_shown(c, "tiny-fill-mask") is None


# -- the assigner's lock and fence, from many threads, on a Redis of their own -----------------

@pytest.fixture
def lone_redis():
    with EmbeddedRedis() as server:
        yield redis.Redis.from_url(server.url)


def write_entries(client: redis.Redis, alive: dict[str, bool], capacity: int) -> None:
    """Registry entries as workers write them: a fresh `updated_at` for the alive, a stale one for the others."""
    now = time.time()
    client.hset(WORKERS_KEY, mapping={
        name: json.dumps({"name": name, "updated_at": now if up else now - 60, "models": {}, "changing": {},
                          "max_models": capacity}) for name, up in alive.items()})


def snapshot(client: redis.Redis, names: list[str]) -> dict[str, set[str]]:
    """Every worker's placement, read in one transaction."""
    with client.pipeline(transaction=True) as pipe:
        for name in names:
            pipe.hkeys(placement_key(name))
        rows = pipe.execute()
    return {name: {k.decode() for k in row} - {"_present"} for name, row in zip(names, rows)}


def test_concurrent_assigners_never_overshoot(lone_redis):
    """16 threads run assignment rounds while workers die and return: no model is ever placed past its replicas,
    no worker past its MAX_MODELS_PER_WORKER; afterwards each model has exactly its replicas, and rounds agree."""
    names = [f"w{i}@h" for i in range(8)]
    models = {f"m{i}": 3 for i in range(6)}  # 18 replicas in 24 slots
    capacity = 3
    store = ModelPlacements(lone_redis)
    for model_id, n in models.items():
        store.put(ModelPlacement(model_id, replicas=n))
    alive = dict.fromkeys(names, True)
    write_entries(lone_redis, alive, capacity)
    stop = threading.Event()
    errors: list[BaseException] = []
    rounds = [0]

    class Slow(Assigner):
        """An assigner on a busy machine: it decides up to 20 ms after it read the registry."""

        def view(self, placements):
            seen = super().view(placements)
            time.sleep(random.random() * 0.02)
            return seen

    def assigner():
        mine = Slow(redis.Redis(connection_pool=lone_redis.connection_pool), HEARTBEAT_S)
        while not stop.is_set():
            try:
                if mine.run_once(force=True) is not None:
                    rounds[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    def churn():
        for i in range(60):
            victim = names[(i * 3) % len(names)]
            alive[victim] = not alive[victim]
            write_entries(lone_redis, alive, capacity)
            time.sleep(0.02)
        alive.update(dict.fromkeys(names, True))
        write_entries(lone_redis, alive, capacity)

    threads = [threading.Thread(target=assigner) for _ in range(16)]
    for t in threads:
        t.start()
    churner = threading.Thread(target=churn)
    churner.start()
    worst_model, worst_worker = 0, 0
    while churner.is_alive():
        placed = snapshot(lone_redis, names)
        for model_id, n in models.items():
            worst_model = max(worst_model, sum(model_id in p for p in placed.values()) - n)
        worst_worker = max(worst_worker, max(len(p) for p in placed.values()) - capacity)
    time.sleep(0.5)  # the last rounds see every worker alive
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert worst_model <= 0 and worst_worker <= 0, (worst_model, worst_worker)
    placed = snapshot(lone_redis, names)
    assert {m: sum(m in p for p in placed.values()) for m in models} == models
    assert Assigner(lone_redis, HEARTBEAT_S).run_once(force=True) == []  # converged: a new round changes nothing
    print(f"{rounds[0]} rounds written by 16 threads")


def test_a_round_that_lost_its_lock_writes_nothing(lone_redis):
    """The fence: a round whose lock expired and went to another assigner (a paused process) writes nothing."""
    write_entries(lone_redis, {"a@h": True, "b@h": True}, 4)
    ModelPlacements(lone_redis).put(ModelPlacement("m", replicas=2))

    class Paused(Assigner):
        def view(self, placements):
            seen = super().view(placements)
            lone_redis.set(ASSIGN_LOCK_KEY, "another assigner's token")  # its lock expired meanwhile
            return seen

    assert Paused(lone_redis, HEARTBEAT_S).run_once(force=True) is None
    assert Placement(lone_redis).of("a@h") is None and Placement(lone_redis).of("b@h") is None
    assert Assigner(lone_redis, HEARTBEAT_S).run_once(force=True) is None  # the other one holds the lock: no round
    lone_redis.delete(ASSIGN_LOCK_KEY)
    assert len(Assigner(lone_redis, HEARTBEAT_S).run_once(force=True)) == 2
    assert Placement(lone_redis).of("a@h") == {"m": None} and Placement(lone_redis).of("b@h") == {"m": None}
