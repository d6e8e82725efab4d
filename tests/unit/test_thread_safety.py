"""The webapp's per-process objects under many request threads at once.

gunicorn runs up to WEB_THREADS (64) request threads per process, plus the
result-listener thread. These tests hammer each shared structure from 64
threads for a second and a half, the interpreter switching threads every
10 µs, with caches that evict and expire all the time; they check that
nothing raised and that no answer was wrong or stale. Where a stale answer
takes one exact interleaving, a second test pins it down. They need the
real Redis on 127.0.0.1:6379, database 15 (flushed before and after):
skipped without it, a failure when CI is set.
"""

import sys
import threading
import time
import traceback
import uuid

import orjson
import pytest
import redis
from cachetools import TTLCache

from common import protocol
from common.settings import Settings
from model_store.store import ModelStore
from tests.helpers import make_model
from tests.unit.conftest import REDIS_URL
from webapp import catalog as catalog_module
from webapp import model_admin, response_cache
from webapp.catalog import ModelCatalog
from webapp.job_service import JobService
from webapp.model_admin import ModelAdmin
from webapp.response_cache import ResponseCache
from webapp.results import ResultListener
from webapp.workers import WorkerDirectory

THREADS = 64  # gunicorn.conf.py's WEB_THREADS
HAMMER_S = 1.5
# Caches whose entries expire this fast expire during every test, not once.
TINY_TTL_S = 0.0001


def small_and_short_lived(most: int | None = None):
    """Stands for cachetools.TTLCache in a module: entries live TINY_TTL_S, at most `most` of them."""

    def make(maxsize, ttl, **kwargs):
        return TTLCache(min(maxsize, most or maxsize), TINY_TTL_S, **kwargs)

    return make


@pytest.fixture
def frequent_switches():
    """Switch threads every 10 µs (not 5 ms), so races show within a second."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def hammer(step, threads=THREADS, seconds=HAMMER_S) -> list[str]:
    """Run `step(i)` in a loop on `threads` threads for `seconds`; the tracebacks it raised."""
    errors: list[str] = []
    deadline = [0.0]
    start = threading.Barrier(threads, action=lambda: deadline.__setitem__(0, time.monotonic() + seconds))

    def loop(i):
        start.wait()
        while time.monotonic() < deadline[0]:
            try:
                step(i)
            except Exception:  # noqa: BLE001 - collected and shown by the test
                errors.append(traceback.format_exc())
                if len(errors) > 100:
                    return

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 10)
    assert not any(worker.is_alive() for worker in workers), "a hammering thread is stuck"
    return errors


def no_errors(errors: list[str]) -> str:
    return f"{len(errors)} errors; the first:\n{errors[0]}" if errors else ""


class PausingRedis:
    """The real Redis client; `after_read` runs once, right after the next HGETALL has its reply."""

    def __init__(self, client):
        self._client = client
        self.after_read = None

    def hgetall(self, key):
        reply = self._client.hgetall(key)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook()
        return reply

    def __getattr__(self, name):
        return getattr(self._client, name)


# -- ModelAdmin: which directory serves a model id --------------------------


def test_model_sources_survive_concurrent_expiry_and_switches(client, frequent_switches, monkeypatch):
    """sources() and set_source() from 64 threads, the cache expiring constantly: no KeyError, no wrong source."""
    monkeypatch.setattr(model_admin, "SOURCES_TTL_S", TINY_TTL_S)
    admin = ModelAdmin(Settings(redis_url=REDIS_URL), client, workers=None)
    allowed = {"m", "m-v2", "m-v3"}

    def step(i):
        if i % 4 == 0:
            admin.set_source("m", ("m", "m-v2", "m-v3")[i % 3])
        else:
            assert admin.source_of("m") in allowed
            assert set(admin.sources()) <= {"m"}

    assert not (errors := hammer(step)), no_errors(errors)
    # Still whole afterwards: a corrupted cache raised on every call until a restart.
    admin.set_source("m", "m-v3")
    for _ in range(5):
        assert admin.source_of("m") == "m-v3"
        time.sleep(TINY_TTL_S)


def test_a_sources_read_that_straddles_a_switch_is_not_kept(client):
    """A switch made while another thread reads the sources is seen at once, not after SOURCES_TTL_S."""
    pausing = PausingRedis(client)
    admin = ModelAdmin(Settings(redis_url=REDIS_URL), pausing, workers=None)
    pausing.after_read = lambda: admin.set_source("m", "m-v2")
    assert admin.source_of("m") == "m"  # read before the switch
    assert admin.source_of("m") == "m-v2"


# -- ModelCatalog ------------------------------------------------------------


def test_catalog_describe_and_forget_from_many_threads(tmp_path, frequent_switches, monkeypatch):
    """describe() and forget() from 64 threads, entries evicted and expiring constantly: always the right model."""
    ids = [f"model-{n}" for n in range(8)]
    for model_id in ids:
        make_model(tmp_path, model_id)
    monkeypatch.setattr(catalog_module, "TTLCache", small_and_short_lived(4))
    catalog = ModelCatalog(ModelStore(tmp_path))

    def step(i):
        model_id = ids[i % len(ids)]
        if i % 8 == 7:
            catalog.forget(model_id)
        else:
            info = catalog.describe(model_id)
            assert info.model_id == model_id and info.complete

    assert not (errors := hammer(step)), no_errors(errors)


# -- ResponseCache -----------------------------------------------------------


def test_response_cache_under_constant_eviction_and_expiry(client, frequent_switches, monkeypatch):
    """lookup() and remember_outputs() from 64 threads on a tiny, fast-expiring level 1: only right outputs."""
    monkeypatch.setattr(response_cache, "TTLCache", small_and_short_lived())  # bounded below by items and bytes
    cache = ResponseCache(Settings(redis_url=REDIS_URL, cache_ttl=60, cache_l1_items=8, cache_l1_bytes=100), client)
    keys = cache.keys("fp", "feature-extraction", [f"text {n}" for n in range(32)], {})
    expected = {key: orjson.dumps([n, key[-6:]]) for n, key in enumerate(keys)}
    client.mset({key: value for key, value in list(expected.items())[::2]})  # half are in level 2

    def step(i):
        asked = [keys[(i + n) % len(keys)] for n in range(0, len(keys), 5)]
        found, _ = cache.lookup("m", asked)
        for index, value in found.items():
            assert value == expected[asked[index]]
        done = keys[i % len(keys)]
        cache.remember_outputs([done], [orjson.loads(expected[done])])

    assert not (errors := hammer(step)), no_errors(errors)


# -- JobService: identical requests share one job ----------------------------


def answer_jobs(client, queue: str, stop: threading.Event, answered: list[str], delay_s: float = 0.02):
    """A stand-in worker thread: takes each job message off `queue`, publishes its result, stores nothing."""

    def run():
        while not stop.is_set():
            popped = client.brpop(queue, timeout=0.1)
            if popped is None:
                continue
            envelope = orjson.loads(popped[1])
            job_id, reply_to = envelope["headers"]["id"], envelope["properties"]["reply_to"]
            time.sleep(delay_s)  # the forward pass: identical requests arriving meanwhile join
            client.publish(reply_to, orjson.dumps({"status": "SUCCESS", "result": [job_id], "task_id": job_id}))
            answered.append(job_id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_and_leave(jobs, waiter, timeout):
    """What /predict does with a waiter: wait for the payload, then leave."""
    try:
        return jobs.wait(waiter, timeout)
    finally:
        jobs.leave(waiter)


def test_coalescing_from_many_threads(client, frequent_switches):
    """64 threads sending 4 distinct requests, some giving up early: each waiting one is woken, nothing is left over."""
    jobs = JobService(Settings(redis_url=REDIS_URL))
    stop = threading.Event()
    answered: list[str] = []
    worker = answer_jobs(client, protocol.queue_for("m"), stop, answered)
    requests = []

    def step(i):
        job_id, waiter = jobs.submit("m", ["x"], False, {}, wait=True, coalesce=f"request-{i % 4}")
        requests.append(job_id)
        if i % 8 == 0:  # options.wait ran out: answered 202 while the others still wait
            wait_and_leave(jobs, waiter, 0.001)
            return
        payload = wait_and_leave(jobs, waiter, 2.0)  # no result is stored: only the published one can wake it
        assert payload is not None, "a waiting request was never woken"
        assert payload["task_id"] == job_id == waiter.job_id and payload["result"] == [job_id]

    try:
        errors = hammer(step)
    finally:
        stop.set()
        jobs.listener.stop()
        worker.join(5)
    assert not errors, no_errors(errors)
    assert 0 < len(answered) < len(requests)  # requests joined jobs in flight
    assert not jobs._inflight and not jobs.listener._waiters  # every request that left cleaned up


def test_identical_requests_arriving_together_share_one_job(client, monkeypatch):
    """64 identical requests arriving at once make one job, however long claiming it takes."""
    jobs = JobService(Settings(redis_url=REDIS_URL))
    register = jobs.listener.register

    def slow_register(job_id):
        time.sleep(0.001)  # widens the moment between "none in flight" and "mine is in flight"
        return register(job_id)

    monkeypatch.setattr(jobs.listener, "register", slow_register)
    together = threading.Barrier(THREADS)
    submitted = []

    def submit():
        together.wait()
        submitted.append(jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same"))

    threads = [threading.Thread(target=submit) for _ in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(submitted) == THREADS
        assert len({job_id for job_id, _ in submitted}) == 1
        assert client.llen(protocol.queue_for("m")) == 1
        assert submitted[0][1].waiting == THREADS  # every request counted: the last to leave unregisters it
    finally:
        jobs.listener.stop()


def test_a_joined_request_outlives_the_request_it_joined(client):
    """When the request that started a job stops waiting, those that joined it are still woken by its result."""
    jobs = JobService(Settings(redis_url=REDIS_URL))
    try:
        first_id, first = jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same")
        joined_id, joined = jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same")
        assert joined_id == first_id
        assert wait_and_leave(jobs, first, 0.05) is None  # the first gives up (options.wait) and answers 202
        late_id, late = jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same")
        assert late_id == first_id  # the job is still in flight: it can still be joined
        client.publish(jobs.listener.channel, orjson.dumps({"status": "SUCCESS", "result": [1], "task_id": first_id}))
        # No result is stored: only the published one can wake them.
        assert wait_and_leave(jobs, joined, 2.0)["result"] == [1]
        assert wait_and_leave(jobs, late, 2.0)["result"] == [1]
        assert not jobs._inflight and not jobs.listener._waiters
    finally:
        jobs.listener.stop()


def test_a_request_whose_twin_finished_since_its_cache_read_queues_nothing(client):
    """An identical job can finish between a request's cache read and its submit: settled() says so, none queued."""
    jobs = JobService(Settings(redis_url=REDIS_URL))
    queue = protocol.queue_for("m")
    try:
        first_id, first = jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same", settled=lambda: False)
        assert first_id is not None and client.llen(queue) == 1
        # one in flight: joined, settled() is not asked
        assert jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same", settled=lambda: True)[0] == first_id
        client.publish(jobs.listener.channel, orjson.dumps({"status": "SUCCESS", "result": [1], "task_id": first_id}))
        for _ in range(2):
            assert wait_and_leave(jobs, first, 2.0)["result"] == [1]
        assert jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same", settled=lambda: True) == (None, None)
        assert client.llen(queue) == 1 and not jobs._inflight and not jobs.listener._waiters
        late_id, late = jobs.submit("m", ["x"], False, {}, wait=True, coalesce="same", settled=lambda: False)
        assert late_id not in (None, first_id) and client.llen(queue) == 2  # not settled: a job of its own
        jobs.leave(late)
    finally:
        jobs.listener.stop()


# -- WorkerDirectory ---------------------------------------------------------


def write_registry(client, version: int) -> None:
    entry = {"name": "w1", "models": {"m": {"fingerprint": f"fp{version}"}}, "updated_at": time.time()}
    client.hset(protocol.WORKERS_KEY, "w1", orjson.dumps(entry))


def version_of(workers: list[dict]) -> int:
    return int(workers[0]["models"]["m"]["fingerprint"][2:])


def test_worker_directory_never_serves_a_registry_older_than_the_last_invalidate(client, frequent_switches):
    """live() from 63 threads while the registry changes and is invalidated: no answer predates the last change."""
    directory = WorkerDirectory(client, heartbeat_s=2.0)
    published = [0]
    write_registry(client, 0)

    def step(i):
        if i == 0:  # the heartbeat writing and the listener thread invalidating
            version = published[0] + 1
            write_registry(client, version)
            directory.invalidate()
            published[0] = version
        else:
            floor = published[0]
            assert version_of(directory.live()) >= floor, "served a registry read before the last change"

    assert not (errors := hammer(step)), no_errors(errors)


def test_a_registry_read_that_straddles_an_invalidate_is_not_kept(client):
    """A registry change signalled while a request reads the registry is served at once, not after CACHE_S."""
    pausing = PausingRedis(client)
    directory = WorkerDirectory(pausing, heartbeat_s=2.0)
    write_registry(client, 1)

    def change():
        write_registry(client, 2)
        directory.invalidate()

    pausing.after_read = change
    assert version_of(directory.live()) == 1  # read before the change
    assert version_of(directory.live()) == 2


# -- ResultListener ----------------------------------------------------------


def test_result_listener_dispatches_while_threads_register_and_discard(client, frequent_switches):
    """The listener thread dispatching while 64 threads register and discard: every waiter gets its own payload."""
    listener = ResultListener(REDIS_URL)
    assert listener.ensure_started()
    publisher = redis.Redis.from_url(REDIS_URL)

    def step(i):
        job_id = uuid.uuid4().hex
        if i % 4 == 0:  # a request that gave up: its result arrives for nobody
            listener.register(job_id)
            listener.discard(job_id)
            publisher.publish(listener.channel, orjson.dumps({"task_id": job_id, "status": "SUCCESS"}))
            return
        waiter = listener.register(job_id)
        publisher.publish(listener.channel, orjson.dumps({"task_id": job_id, "status": "SUCCESS", "result": i}))
        try:
            assert waiter.event.wait(5.0), "a registered waiter was never woken"
            assert waiter.payload == {"task_id": job_id, "status": "SUCCESS", "result": i}
        finally:
            listener.discard(job_id)

    try:
        errors = hammer(step)
    finally:
        listener.stop()
        publisher.close()
    assert not errors, no_errors(errors)
    assert not listener._waiters
