"""Private inputs: task messages and task events carry a summary of a job's arguments, never its text."""

import time
from types import SimpleNamespace

import orjson

from common import envelope, protocol
from common.envelope import Envelope
from common.errors import InferenceFailed, ValidationFailed
from common.settings import Settings
from tasks.job import Job
from tasks.reporting import Reporter
from webapp.publisher import RedisPublisher

SECRET = "the quartermaster's private sentence 7f3a"


class Pipe:
    """Stands for a Redis pipeline: keeps what was LPUSHed."""

    def __init__(self):
        self.pushed = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def hset(self, *a, **kw):
        pass

    def expire(self, *a):
        pass

    def sadd(self, *a):
        pass

    def lpush(self, key, value):
        self.pushed.append(value)

    def execute(self):
        return []

    def pipeline(self, transaction=False):
        return self


def test_summary_counts_items_and_characters_only():
    """model, item count, total characters: no text, whatever the item shape."""
    assert protocol.arguments_summary("minilm", ["abc", "de"]) == "{'model_id': 'minilm', 'items': 2, 'chars': 5}"
    assert protocol.arguments_summary("tiny-qa", {"question": "ab", "context": "cde"}) == \
        "{'model_id': 'tiny-qa', 'items': 1, 'chars': 5}"
    assert SECRET not in protocol.arguments_summary("m", [SECRET, {"x": SECRET}])


def test_webapp_message_shows_a_summary_not_the_inputs():
    """The envelope the webapp LPUSHes: kwargsrepr is the summary; the body still holds the inputs."""
    pipe = Pipe()
    publisher = RedisPublisher(Settings(), pipe)
    publisher.publish("job-1", "minilm", {"model_id": "minilm", "inputs": [SECRET], "is_list": True},
                      "atf:replies:x", {"status": "queued", "model_id": "minilm"})
    message = envelope.read(pipe.pushed[0])
    assert message.headers["kwargsrepr"] == protocol.arguments_summary("minilm", [SECRET])
    assert message.headers["argsrepr"] == "()"
    assert SECRET not in orjson.dumps(message.headers).decode() and SECRET.encode() in message.body


def _reporter_with_events():
    """A Reporter whose events are kept in its buffer (no dispatcher, nothing published)."""
    reporter = Reporter(Settings(), SimpleNamespace(event_dispatcher=None),
                        SimpleNamespace(acks_with_results=False, ack=lambda jobs: None))
    reporter._send_events = True
    return reporter


def test_task_events_carry_no_inputs_outputs_or_error_text():
    """received: a summary (not the client's kwargsrepr); succeeded: a count; failed: the error's class and type."""
    reporter = _reporter_with_events()
    try:
        # A plain Celery client's message: its kwargsrepr holds the text.
        headers = {"id": "j1", "task": protocol.INFER_TASK, "kwargsrepr": repr({"inputs": [SECRET]}),
                   "argsrepr": repr(("minilm", SECRET))}
        message = Envelope(headers=headers, properties={}, content_type="application/json", body=b"")
        ok = Job(id="j1", model_id="minilm", inputs=[SECRET], params={}, is_list=True, message=message)
        ok.outputs, ok.remaining = [SECRET], 0
        bad = Job(id="j2", model_id="minilm", inputs=[SECRET], params={}, is_list=False)
        bad.fail(InferenceFailed(f"the model failed on {SECRET}"))
        invalid = Job(id="j3", model_id="minilm", inputs=[SECRET], params={}, is_list=False)
        invalid.fail(ValidationFailed(f"parameters.x {SECRET!r} is unknown"))
        for job in (ok, bad, invalid):
            reporter.received(job)
        now = time.time()
        events = list(reporter._events) + [reporter._outcome_event(j, now) for j in (ok, bad, invalid)]
    finally:
        reporter.stop(1.0)
    assert SECRET not in repr(events)
    received = events[0][2]
    assert received["kwargs"] == protocol.arguments_summary("minilm", [SECRET]) and received["args"] == "()"
    assert events[-2][2]["exception"] == "InferenceFailed('inference_failed')"
    assert events[-1][0] == "task-failed" and events[-1][2]["exception"] == "ValidationFailed('validation_error')"
