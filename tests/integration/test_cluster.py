"""Hosts on one machine (devtools/cluster.py): real processes in network namespaces.

Redis, the webapp and two workers each run in a namespace of their own,
joined by a bridge; the test (root namespace) reaches the webapp and the
cluster's Redis over that bridge. Skipped only where `ip netns add` is
not permitted (not root, no CAP_NET_ADMIN). State and logs go to pytest's
tmp dirs; after a killed test run, `python -m devtools.cluster --run-dir
<that dir> down` removes what it left.
"""

from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest
import redis
import requests

from common.deliveries import deliveries_key
from devtools import cluster as cluster_tool
from devtools.processes import PYTHON, ROOT
from devtools.redis_server import redis_answers
from tests.faults.ledger import Ledger
from tests.helpers import SENTENCES, wait_until

JOBS = 200
ADMIN = {"Authorization": "Bearer cluster-admin-token"}  # the test is not on the webapp's loopback

_problem = cluster_tool.netns_allowed()
pytestmark = pytest.mark.skipif(_problem is not None, reason=_problem or "")


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    """A model store holding only minilm, built by the real CLI."""
    root = tmp_path_factory.mktemp("cluster-models")
    out = subprocess.run([PYTHON, "-m", "model_store", "build-demo", "minilm"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, MODEL_DIR=str(root), PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stdout + out.stderr
    return root


@pytest.fixture(scope="module")
def two_hosts(minilm_dir, tmp_path_factory):
    """Redis, the webapp and workers w1, w2 in namespaces of their own; heartbeats every 0.5 s."""
    c = cluster_tool.Cluster(workers=2, model_dir=minilm_dir, preload="minilm", prefix="atft", heartbeat_s=0.5,
                             admin_token=ADMIN["Authorization"].split()[1],
                             run_dir=tmp_path_factory.mktemp("cluster-run"))
    c.up()
    try:
        yield c
    finally:
        c.down()
        assert cluster_tool.leftovers(c.tag) == []


def bodies(count: int, start: int = 0) -> list[dict]:
    """`count` jobs of two different sentences each, the cache bypassed."""
    n = len(SENTENCES)
    return [{"model_id": "minilm", "options": {"use_cache": False},
             "inputs": [SENTENCES[(start + 2 * i + k) % n] for k in range(2)]} for i in range(count)]



def connects(c, role: str, host: str, port: int) -> bool:
    """Whether a TCP connection from inside host `role` to host:port succeeds."""
    probe = (f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=2); s.close()")
    return c.netns_exec(role, [PYTHON, "-c", probe], timeout=30).returncode == 0


def running(pid: int) -> bool:
    """Whether the process runs (a zombie, dead and not yet reaped by this test process, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_predict_is_served_by_a_worker_in_its_own_namespace(two_hosts):
    c = two_hosts
    response = requests.post(c.url + "/predict", json={"model_id": "minilm", "inputs": "Hello, cluster.",
                                                       "options": {"use_cache": False}}, timeout=60)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    record = redis.Redis.from_url(c.redis_url, decode_responses=True).hgetall(f"atf:job:{job_id}")
    assert record["status"] == "succeeded"
    worker = record["holder"].split("#")[0]
    assert worker in {c.worker_name("w1"), c.worker_name("w2")}
    # That worker's process is one of the processes of its host's namespace.
    role = worker.split("@")[0]
    assert c.processes[role].pid in cluster_tool.namespace_pids(c.state.hosts[role].netns)


def test_a_worker_host_reaches_the_clusters_redis_and_nothing_of_the_root_namespace(two_hosts, redis_url):
    c = two_hosts
    root_port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    assert redis_answers(redis_url)  # the session's Redis, on the root namespace's loopback
    redis_host = c.state.hosts["redis"].address
    assert connects(c, "w1", redis_host, cluster_tool.REDIS_PORT)
    assert not connects(c, "w1", "127.0.0.1", root_port)
    assert not connects(c, "w1", "127.0.0.1", 6379)
    bridge = c.state.subnet.rsplit(".", 1)[0] + ".1"  # the root namespace's own address on the bridge
    assert not connects(c, "w1", bridge, root_port)


def test_a_cut_host_s_jobs_come_back_and_it_stores_no_late_result(two_hosts):
    """w1's link goes down while it holds jobs: w2 runs them; back online, w1 runs none of them again."""
    c = two_hosts
    db = redis.Redis.from_url(c.redis_url, decode_responses=True)
    ledger = Ledger(c.redis_url, c.url)
    ledger.submit_many(bodies(JOBS, start=1000))
    old = c.entry("w1")["holder"]
    wait_until(lambda: db.hlen(deliveries_key(old)) > 0, 30)
    t0 = time.monotonic()
    c.cut("w1")
    held = db.hlen(deliveries_key(old))
    cut_at = time.time()
    try:
        # Three missed heartbeats (1.5 s) and the reaper gives its jobs back.
        back_s = wait_until(lambda: db.hlen(deliveries_key(old)) == 0, 30) - t0
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
    finally:
        c.restore("w1")
    outcome = ledger.wait(timeout=180, since=t0)
    print(f"w1 held {held} job(s) when cut; back in their queue {back_s:.1f} s later; {outcome}")
    assert held > 0
    assert outcome.accepted == JOBS and outcome.succeeded == JOBS
    assert outcome.lost == 0 and outcome.run_twice == 0 and outcome.failed == {}
    records = ledger.records(list(ledger.accepted))
    # Started at most twice (once by w1 before the cut, once after it by
    # someone else); the old session started nothing after the cut, and
    # stored nothing after it either: what it had computed when it was cut
    # is dropped on its return (its jobs were given back and ran again).
    assert max(int(r["attempts"]) for r in records) <= 2
    assert not [r for r in records if r["holder"] == old and float(r.get("started_at") or 0) > cut_at]
    stored_on_return = sum(1 for r in records if r["holder"] == old and float(r["finished_at"]) > cut_at)
    print(f"results of the old session stored after it was cut: {stored_on_return}, dropped as late: "
          f"{outcome.late_dropped}")
    assert stored_on_return == 0
    # w1 noticed it was declared dead and came back under a new session.
    wait_until(lambda: (c.entry("w1") or {}).get("holder") not in (None, old), 60)


def placement_of(c, model_id: str) -> dict:
    models = requests.get(c.url + "/models", timeout=10).json()["models"]
    return next(m for m in models if m["model_id"] == model_id)["placement"] or {}


def test_a_cut_host_s_placed_model_is_re_placed_and_every_job_succeeds(two_hosts, minilm_dir):
    """One replica of a model, on the host that is cut: another worker loads it, and serves every job."""
    c = two_hosts
    model = "minilm-placed"
    if not (minilm_dir / model).exists():
        (minilm_dir / model).symlink_to(minilm_dir / "minilm", target_is_directory=True)
    response = requests.put(f"{c.url}/models/{model}/placement", json={"replicas": 1, "wait": 120},
                            headers=ADMIN, timeout=180)
    assert response.status_code == 200, response.text
    wait_until(lambda: placement_of(c, model).get("converged"), 120, step=0.5)
    (first,) = placement_of(c, model)["serving_on"]
    role = first.split("@")[0]
    other = c.worker_name("w2" if role == "w1" else "w1")
    ledger = Ledger(c.redis_url, c.url)
    ledger.submit_many([{**body, "model_id": model} for body in bodies(60, start=3000)])
    t0 = time.monotonic()
    c.cut(role)
    try:
        moved = wait_until(lambda: placement_of(c, model).get("serving_on") == [other], 120, step=0.5) - t0
        outcome = ledger.wait(timeout=180, since=t0)
    finally:
        c.restore(role)
    print(f"{model} served by {first}; its host cut; served by {other} {moved:.1f} s later; {outcome}")
    assert outcome.accepted == 60 and outcome.succeeded == 60
    assert outcome.lost == 0 and outcome.run_twice == 0 and outcome.failed == {}
    # Back online, the old worker rejoins; the model keeps one replica, not two.
    wait_until(lambda: (c.entry(role) or {}).get("holder") is not None, 60)
    wait_until(lambda: placement_of(c, model)["serving_on"] == [other], 60, step=0.5)
    time.sleep(3)  # six heartbeats: rounds that would place a second replica have run
    assert placement_of(c, model)["serving_on"] == [other] and placement_of(c, model)["converged"]
    assert requests.delete(f"{c.url}/models/{model}/placement", headers=ADMIN, timeout=60).status_code == 200


def test_down_after_a_crash_of_the_tool_leaves_nothing(minilm_dir, tmp_path):
    """A cluster whose owner vanished (no down called): `python -m devtools.cluster down` removes it all."""
    c = cluster_tool.Cluster(workers=1, model_dir=minilm_dir, prefix="atft", run_dir=tmp_path)
    try:
        c.up()
        pids = [pid for host in c.state.hosts.values() for pid in cluster_tool.namespace_pids(host.netns)]
        assert len(pids) >= 3 and cluster_tool.leftovers(c.tag)
        for args in (["down", "--name", c.tag], ["down", "--name", c.tag]):  # idempotent
            out = subprocess.run([PYTHON, "-m", "devtools.cluster", "--run-dir", str(tmp_path), *args], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
        assert cluster_tool.leftovers(c.tag) == []
        assert not [pid for pid in pids if running(pid)]
        assert not list(tmp_path.glob("cluster-*.json"))
    finally:
        c.down()
