"""The Redis delivery protocol (common/deliveries.py) against a real Redis (kombu and Celery: test_wire_contract.py).

The module has a Redis of its own: the session's server also serves live
workers and webapps, whose reapers sweep the same beats and would take the
stale holders these tests plant before the reapers under test do.
"""

import os
import signal
import threading
import time
import types
import uuid

import pytest
import redis

from common import envelope, lua, protocol
from common.deliveries import BEATS_KEY, TOMBSTONE_PREFIX, Deliveries, Reaper, new_holder
from common.envelope import lists_of
from tasks.sources import RedisSource
from tests.helpers import command_calls, wait_until


@pytest.fixture(scope="module")
def redis_url(private_redis_url):
    """A private server: nothing else reaps here."""
    return private_redis_url


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def deliveries(client):
    return Deliveries(client)


@pytest.fixture
def queue():
    return f"infer.test-{uuid.uuid4().hex[:8]}"


def push(client, queue, n, start=0):
    """n messages written as the webapp writes them; returns their job ids, oldest first."""
    ids = [f"job-{start + i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for job_id in ids:
        client.lpush(queue, envelope.write(job_id, queue, {"model_id": "m", "inputs": ["x"]}, "", "test"))
    return ids


def ids_of(raw_messages):
    return [envelope.read(raw).job_id for raw in raw_messages]


def queued_ids(client, queue):
    """Job ids in the order consumers will read them (kombu pops from the right)."""
    return ids_of(reversed(client.lrange(queue, 0, -1)))


def test_fetch_moves_messages_into_the_holder_oldest_first(client, deliveries, queue):
    ids = push(client, queue, 5)
    holder = new_holder("w@test")
    got = deliveries.fetch(holder, [(queue, 3)], first_tag=1)
    assert [d.tag for d in got] == ["1", "2", "3"] and {d.queue for d in got} == {queue}
    assert ids_of(d.raw for d in got) == ids[:3]
    assert queued_ids(client, queue) == ids[3:]
    assert ids_of(deliveries.held(holder).values()) == ids[:3]


def test_a_fetch_takes_at_most_its_total_reading_the_queues_in_order(client, deliveries):
    """The worker's room across its models: 4 in all, the first queue's 2, then the second's first 2."""
    first, second = f"infer.a-{uuid.uuid4().hex[:6]}", f"infer.b-{uuid.uuid4().hex[:6]}"
    a, b = push(client, first, 2), push(client, second, 5)
    holder = new_holder("w@test")
    got = deliveries.fetch(holder, [(first, 3), (second, 3)], first_tag=1, total=4)
    assert ids_of(d.raw for d in got) == a + b[:2] and queued_ids(client, second) == b[2:]
    assert deliveries.fetch(holder, [(second, 3)], first_tag=5, total=0) == [] and client.llen(second) == 3


def test_fetch_reads_kombus_priority_lists_after_the_plain_one(client, deliveries, queue):
    low = push(client, lists_of(queue)[2], 1)
    plain = push(client, queue, 1)
    got = deliveries.fetch(new_holder("w@test"), [(queue, 5)], first_tag=1)
    assert ids_of(d.raw for d in got) == plain + low and {d.queue for d in got} == {queue}


def test_hand_back_puts_messages_at_the_front_in_their_order(client, deliveries, queue):
    ids = push(client, queue, 6)
    holder = new_holder("w@test")
    got = deliveries.fetch(holder, [(queue, 4)], first_tag=10)
    assert deliveries.hand_back(holder, [got[2].tag, got[0].tag, "999"]) == 2
    assert queued_ids(client, queue) == [ids[0], ids[2], ids[4], ids[5]]
    assert ids_of(deliveries.held(holder).values()) == [ids[1], ids[3]]


def test_a_silent_holder_is_reaped_exactly_once_by_concurrent_reapers(client, deliveries, redis_url, queue):
    """Eight reapers at once: every delivery goes back once, none twice, none lost."""
    ids = push(client, queue, 50)
    holder = new_holder("w@test")
    assert deliveries.beat(holder)
    deliveries.fetch(holder, [(queue, 40)], first_tag=1)
    client.zadd(BEATS_KEY, {holder: 1.0})  # its last beat was long ago
    results, barrier = [], threading.Barrier(8)
    reapers = [Deliveries(redis.Redis.from_url(redis_url)) for _ in range(8)]

    def reap(reaper):
        barrier.wait()
        results.extend(r for r in reaper.reap(6.0) if r.holder == holder)

    threads = [threading.Thread(target=reap, args=(r,)) for r in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and results[0].count == 40 and sorted(results[0].job_ids) == sorted(ids[:40])
    assert queued_ids(client, queue) == ids  # back at the front, in their order, ahead of the 10 left
    assert deliveries.held(holder) == {} and not deliveries.beat(holder)  # it learns it was declared dead


def test_a_beating_holder_is_never_reaped(client, deliveries, queue):
    push(client, queue, 3)
    holder = new_holder("w@test")
    assert deliveries.beat(holder)
    deliveries.fetch(holder, [(queue, 3)], first_tag=1)
    assert all(r.holder != holder for r in deliveries.reap(6.0))
    assert len(deliveries.held(holder)) == 3 and deliveries.retire(holder) == 3
    assert client.llen(queue) == 3 and client.zscore(BEATS_KEY, holder) is None


def test_the_reaper_requeues_the_records_of_jobs_the_dead_holder_was_running(client, deliveries, queue):
    ids = push(client, queue, 2)
    holder = new_holder("w@test")
    deliveries.beat(holder)
    deliveries.fetch(holder, [(queue, 2)], first_tag=1)
    client.hset(protocol.job_key(ids[0]), mapping={"status": "running", "holder": holder, "started_at": "1"})
    client.hset(protocol.job_key(ids[1]), mapping={"status": "running", "holder": "someone-else", "started_at": "1"})
    client.zadd(BEATS_KEY, {holder: 1.0})
    reaper = Reaper(deliveries, client, client, heartbeat_s=2.0)
    assert any(r.holder == holder for r in reaper.reap_once())
    assert client.hget(protocol.job_key(ids[0]), "status") == b"queued"
    assert client.hget(protocol.job_key(ids[0]), "started_at") is None
    assert client.hget(protocol.job_key(ids[1]), "status") == b"running"  # another worker took it since


def test_a_holder_declared_dead_fetches_and_starts_nothing_more(client, deliveries, queue):
    """Calls sent before its link was cut and received after the reaper ran: refused, nothing lost or run."""
    ids = push(client, queue, 4)
    holder = new_holder("w@test")
    deliveries.beat(holder)
    deliveries.fetch(holder, [(queue, 2)], first_tag=1)
    client.hset(protocol.job_key(ids[0]), mapping={"status": "queued", "created_at": "1"})
    client.zadd(BEATS_KEY, {holder: 1.0})
    assert any(r.holder == holder for r in deliveries.reap(6.0))
    assert deliveries.fetch(holder, [(queue, 4)], first_tag=3) == []  # the late fetch
    assert deliveries.held(holder) == {} and queued_ids(client, queue) == ids
    start = client.register_script(lua.source("start_jobs"))
    tombstone = TOMBSTONE_PREFIX + holder
    verdicts, _ = start(keys=[protocol.job_key(ids[0])], args=["2", holder, 3, 60, "0", tombstone])
    assert verdicts == [-3] and client.hget(protocol.job_key(ids[0]), "status") == b"queued"  # the late start
    alive = new_holder("w@test")
    verdicts, _ = start(keys=[protocol.job_key(ids[0])], args=["2", alive, 3, 60, "0", TOMBSTONE_PREFIX + alive])
    assert verdicts == [1] and client.hget(protocol.job_key(ids[0]), "holder") == alive.encode()


def test_a_fetch_below_the_floor_takes_nothing(client, deliveries, queue):
    """A fetch whose answer the holder gave up on (hand_back with a floor) may reach Redis later,
    over another connection: it must not take messages into tags the holder no longer watches."""
    ids = push(client, queue, 3)
    holder = new_holder("w@test")
    assert deliveries.hand_back(holder, ["1", "2"], floor=3) == 0  # given up before the fetch arrived
    assert deliveries.fetch(holder, [(queue, 2)], first_tag=1) == []  # the late fetch
    assert queued_ids(client, queue) == ids and deliveries.held(holder) == {}
    assert [d.tag for d in deliveries.fetch(holder, [(queue, 2)], first_tag=3)] == ["3", "4"]


def test_a_fetch_whose_answer_is_lost_gives_its_jobs_back_and_none_sticks(client, deliveries, redis_url, queue,
                                                                           caplog):
    """Redis runs a fetch after the worker stopped waiting for its answer (Redis stalled, or stopped
    or the link broke after the script ran): the jobs it took must not sit in a live holder's deliveries."""
    ids = push(client, queue, 5)
    settings = types.SimpleNamespace(broker_url=redis_url, result_backend=redis_url)
    delivered, tickets = [], []  # the batcher's room: one fetch per ticket

    def room(model_id):
        return 8 if tickets and tickets.pop() else 0

    source = RedisSource(settings, "w@test", lambda delivery, holder: delivered.append(delivery), room)
    source.deliveries = Deliveries(redis.Redis.from_url(redis_url, socket_timeout=0.3))
    source.start()
    source.serve(queue.removeprefix("infer."))
    for script in ("fetch", "hand_back"):
        client.script_load(lua.source(script))  # as on a worker that has fetched before
    caplog.set_level("WARNING", logger="tasks.sources")
    pid = client.info("server")["process_id"]
    os.kill(pid, signal.SIGSTOP)  # the server stalls: the fetch times out, and runs when it resumes
    try:
        tickets.append(1)
        source.wake()
        wait_until(lambda: not tickets, timeout=5)
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        # The late fetch took the 5 jobs; the fetcher gives them back though it has no room now.
        wait_until(lambda: any("answer was lost had taken 5 job(s)" in r.getMessage() for r in caplog.records), 10)
        assert delivered == [] and queued_ids(client, queue) == ids and deliveries.held(source.holder) == {}
        tickets.append(1)
        source.wake()
        wait_until(lambda: len(delivered) == 5, timeout=5)
        assert sorted(ids_of(d.raw for d in delivered)) == sorted(ids) and client.llen(queue) == 0
        assert sorted(deliveries.held(source.holder)) == sorted(d.tag for d in delivered)
    finally:
        source.stop()


def test_an_idle_fetcher_fetches_once_per_message_and_on_room_only_when_room_held_it_back(client, redis_url, queue,
                                                                                          monkeypatch):
    """One request at a time: each message costs one fetch, and a finished job's freed slot none (the
    queue is empty and watched); a message left queued for want of room is fetched when room is freed."""
    import tasks.sources

    monkeypatch.setattr(tasks.sources, "RECHECK_S", 60.0)  # any fetch below comes from a wake-up
    settings = types.SimpleNamespace(broker_url=redis_url, result_backend=redis_url)
    delivered, room = [], {"free": 8}
    source = RedisSource(settings, "w@test", lambda delivery, holder: delivered.append(delivery),
                         lambda model_id: room["free"])
    source.start()
    source.serve(queue.removeprefix("infer."))
    try:
        wait_until(lambda: queue not in source._pending, timeout=5)  # emptied: its watcher waits
        before = command_calls(client, "evalsha")  # the fetcher's only scripted call here is its fetch
        for n in range(1, 6):
            push(client, queue, 1, start=n)
            wait_until(lambda n=n: len(delivered) == n, timeout=5)
            wait_until(lambda: queue not in source._pending, timeout=5)
            for _ in range(3):  # the reporter and the batcher, as the job finishes
                source.wake()
            time.sleep(0.05)
        assert command_calls(client, "evalsha") - before == 5 and client.llen(queue) == 0

        room["free"] = 0  # the batcher is full: the next message waits in its queue
        source.wake()
        ids = push(client, queue, 2, start=10)
        time.sleep(0.5)
        assert len(delivered) == 5 and queued_ids(client, queue) == ids
        room["free"] = 8
        source.wake()  # a job finished: its slot takes the waiting messages
        wait_until(lambda: len(delivered) == 7, timeout=5)
        assert ids_of(d.raw for d in delivered[5:]) == ids
    finally:
        source.stop()


def test_a_message_costs_a_fetch_of_its_own_queue_only_however_many_the_worker_serves(client, redis_url, monkeypatch):
    """A worker serving 20 models, all their queues emptied: a message on one of them is fetched
    by reading that queue's lists, not the 80 lists of all 20 (with 50 models per worker that was
    about 1,300 Redis commands per request). Room held back, a queue is read again when room frees."""
    import tasks.sources

    monkeypatch.setattr(tasks.sources, "RECHECK_S", 60.0)  # any fetch below comes from a wake-up
    settings = types.SimpleNamespace(broker_url=redis_url, result_backend=redis_url)
    models = [f"many-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    delivered, room = [], {m: 4 for m in models}  # the batcher's room per model

    def take(delivery, holder):
        delivered.append(delivery)
        room[delivery.queue.removeprefix("infer.")] -= 1

    source = RedisSource(settings, "w@test", take, lambda model_id: room[model_id])
    source.start()
    for model_id in models:
        source.serve(model_id)
    try:
        wait_until(lambda: not source._pending, timeout=5)  # all emptied and watched
        for n, model_id in enumerate(models[:5], start=1):
            before = command_calls(client, "rpop")
            push(client, protocol.queue_for(model_id), 1, start=n)
            wait_until(lambda n=n: len(delivered) == n, timeout=5)
            wait_until(lambda: not source._pending, timeout=5)
            # that queue's lists read (its plain one, then kombu's priority lists for the room left)
            assert command_calls(client, "rpop") - before == len(lists_of(protocol.queue_for(model_id)))
            assert delivered[-1].queue == protocol.queue_for(model_id)

        busy = models[7]
        room[busy] = 0  # the batcher is full for this model: its messages wait in their queue
        ids = push(client, protocol.queue_for(busy), 3, start=100)
        time.sleep(0.3)
        assert len(delivered) == 5 and queued_ids(client, protocol.queue_for(busy)) == ids
        before = command_calls(client, "rpop")
        room[busy] = 2
        source.wake()  # room freed: the queue room held back is read, and only it
        wait_until(lambda: len(delivered) == 7, timeout=5)
        assert [d.queue for d in delivered[5:]] == [protocol.queue_for(busy)] * 2
        assert command_calls(client, "rpop") - before == 1  # its plain list held what room took
        assert queued_ids(client, protocol.queue_for(busy)) == ids[2:]
    finally:
        source.stop()
