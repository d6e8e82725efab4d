"""The reporter's result writes against a real Redis: one round trip per batch, and a lost script reloaded.

A private server: the test reads its command statistics, which nothing else may move.
"""

import time
from types import SimpleNamespace

import pytest
import redis

from common import protocol
from common.settings import Settings
from tasks.job import Job
from tasks.reporting import Reporter
from tests.helpers import command_calls, wait_until


@pytest.fixture
def reporter(private_redis_url):
    source = SimpleNamespace(acks_with_results=False, ack=lambda jobs: None, wake=lambda: None)
    reporter = Reporter(Settings(redis_url=private_redis_url), SimpleNamespace(event_dispatcher=None), source)
    yield reporter
    reporter.stop(5.0)


def finished(n: int) -> Job:
    job = Job(id=f"store-{n}-{time.monotonic_ns()}", model_id="m", inputs=["a"], params={}, is_list=False)
    job.outputs, job.remaining = [[0.5, -1.0]], 0
    return job


def test_results_are_stored_without_asking_whether_the_script_exists_and_after_a_script_flush(reporter,
                                                                                               private_redis_url):
    client = redis.Redis.from_url(private_redis_url)
    jobs = [finished(n) for n in range(6)]
    reporter.finish("m", jobs[:1])
    wait_until(lambda: client.exists(protocol.result_key(jobs[0].id)), timeout=10)
    client.config_resetstat()
    for job in jobs[1:3]:
        reporter.finish("m", [job])
    wait_until(lambda: all(client.exists(protocol.result_key(j.id)) for j in jobs[1:3]), timeout=10)
    assert command_calls(client, "script|exists") == 0 and command_calls(client, "script|load") == 0
    assert command_calls(client, "evalsha") == 2  # one script per batch, nothing else scripted

    client.script_flush()  # as a restarted Redis: the script is gone
    for job in jobs[3:]:
        reporter.finish("m", [job])
    wait_until(lambda: all(client.exists(protocol.result_key(j.id)) for j in jobs[3:]), timeout=10)
    # Every job handed over is let go (its count drops just after its store returns, on the reporter's thread).
    wait_until(lambda: reporter.unacked() == 0, timeout=10)
    stored = client.get(protocol.result_key(jobs[5].id))
    assert b'"SUCCESS"' in stored and b"-1.0" in stored
