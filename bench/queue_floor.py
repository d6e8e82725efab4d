"""The queue floor: the HTTP floor plus the two Redis hops the architecture requires, and nothing else.

SPEC §1 puts a queue between the webapp and the model: a request is a
message on a Redis list, a worker process takes it, and its answer comes
back to the webapp's waiting thread through Redis. This is a minimal
implementation of that path with no work on it, the webapp synchronous as
ours is (one LPUSH per request):

- the webapp (this module's `app`, under the project's gunicorn settings,
  like bench/floor.py) parses the JSON body, LPUSHes a message naming its
  process's reply channel, and waits on an Event; one listener thread per
  process, subscribed to that channel, wakes the request's thread;
- the worker (`python -m bench.queue_floor worker`) pops up to 64 messages
  at a time and PUBLISHes each answer (32 floats, the tiny model's shape),
  one pipeline per batch.

Nothing is recorded, acked, cached, counted or logged: no job survives a
crash here, so this is a floor to measure against, not a design to use.
bench/framework.py runs it beside the HTTP floor and the service.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid

import redis
from flask import Flask, jsonify, request

QUEUE = "queue-floor:requests"
EMBEDDING = [0.012345678] * 32
BATCH = 64


class Replies:
    """One subscription per process; each request's thread waits on its own Event."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.channel = ""  # one per process, named when it starts listening
        self._waiting: dict[str, list] = {}
        self._lock = threading.Lock()
        self._pid = None

    def _ensure_listening(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # gunicorn forks: one listener per worker process
                self.channel = f"queue-floor:reply:{uuid.uuid4().hex}"
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                threading.Thread(target=self._listen, args=(pubsub,), daemon=True).start()
                self._pid = os.getpid()

    def _listen(self, pubsub) -> None:
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            job_id, _, body = message["data"].partition(b" ")
            with self._lock:
                slot = self._waiting.pop(job_id.decode(), None)
            if slot is not None:
                slot[1] = body
                slot[0].set()

    def ask(self, text: str, timeout: float = 30.0) -> bytes:
        self._ensure_listening()
        job_id = uuid.uuid4().hex
        slot = [threading.Event(), None]
        with self._lock:
            self._waiting[job_id] = slot
        self.client.lpush(QUEUE, json.dumps({"id": job_id, "reply_to": self.channel, "text": text}))
        if not slot[0].wait(timeout):
            with self._lock:
                self._waiting.pop(job_id, None)
            raise TimeoutError("no answer from the queue floor's worker")
        return slot[1]


def connect() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


app = Flask(__name__)
replies = Replies(connect())


@app.post("/predict")
def predict():
    body = request.get_json()
    result = json.loads(replies.ask(body["inputs"]))
    return jsonify(job_id="0" * 32, model_id=body["model_id"], status="succeeded", cached=False, outputs=[result])


@app.get("/health/live")
def live():
    return jsonify(status="ok")


def work(client: redis.Redis) -> None:
    """The worker: take up to BATCH messages, answer each, one pipeline per batch; forever."""
    answer = json.dumps(EMBEDDING).encode()
    while True:
        first = client.brpop([QUEUE], timeout=1)  # the oldest: LPUSH adds on the left
        if first is None:
            continue
        messages = [first[1]] + (client.rpop(QUEUE, BATCH - 1) or [])
        with client.pipeline(transaction=False) as pipe:
            for raw in messages:
                message = json.loads(raw)
                pipe.publish(message["reply_to"], message["id"].encode() + b" " + answer)
            pipe.execute()


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m bench.queue_floor worker   (REDIS_URL names the Redis)")
    work(connect())
