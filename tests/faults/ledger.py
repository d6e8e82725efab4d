"""Every job a fault test submits, followed to its final state and counted.

The ledger records each submission's HTTP answer; a job is *accepted* when
the API answered 202 (or 200) with a job id. After the fault it polls every
accepted job's stored result until all are final, and listens to Celery's
result channels (`celery-task-meta-<id>`) to see each result published:

- succeeded / failed (by error type): the stored result;
- lost or stuck: accepted, and no final result by the deadline;
- run twice: a job whose result was stored or published more than once,
  or changed after it was first seen;
- late results dropped: a second run's result that a worker did not store
  because the first was there (the workers count them: `late_results` in
  atf:batches:<model>) — work done twice, invisible to clients;
- restarted: jobs started more than once (their worker died running them).
"""

from __future__ import annotations

import concurrent.futures as futures
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import orjson
import redis
import requests

from common import protocol

FINAL = ("SUCCESS", "FAILURE", "REVOKED")
POLL_S = 2.0


@dataclass
class Outcome:
    """What became of the accepted jobs of one fault."""

    accepted: int
    succeeded: int
    failed: dict = field(default_factory=dict)  # error type -> jobs
    lost: int = 0
    run_twice: int = 0
    late_dropped: int = 0
    restarted: int = 0
    seconds_to_final: float | None = None  # from the fault until every job was final
    answers: dict = field(default_factory=dict)  # HTTP status -> submissions

    def as_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """Submits jobs through the API and accounts for every one."""

    def __init__(self, redis_url: str, api_url: str):
        self.redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.api_url = api_url
        self.accepted: dict[str, float] = {}  # job id -> when the API accepted it (monotonic)
        self.answers: Counter = Counter()
        self.bad_answers: list[str] = []  # bodies of answers that are not the API's JSON
        self.errors: Counter = Counter()  # "<status> <error type>" -> answers
        self.published: Counter = Counter()
        self.first_seen: dict[str, bytes] = {}
        self.seen_final: dict[str, tuple[float, dict]] = {}  # job id -> (when, result meta)
        self.changed: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._late_before = self._late_results()
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        # Publishes can be missed (a subscriber that falls behind is cut off
        # by Redis): jobs not seen final are also read from the store, every
        # POLL_S, well within any RESULT_TTL a test uses.
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        self._session = requests.Session()

    # -- submitting -------------------------------------------------------

    def submit(self, body: dict, path: str = "/jobs", timeout: float = 60.0) -> str | None:
        """POST one job; its id when accepted."""
        try:
            response = self._session.post(self.api_url + path, json=body, timeout=timeout)
        except requests.RequestException as exc:
            with self._lock:
                self.answers[f"no answer ({type(exc).__name__})"] += 1
            return None
        with self._lock:
            self.answers[response.status_code] += 1
        try:
            payload = response.json()
        except ValueError:
            with self._lock:
                self.bad_answers.append(response.text[:200])
            return None
        if response.status_code >= 400:
            error = payload.get("error")
            if not isinstance(error, dict):
                self.bad_answers.append(response.text[:200])
            else:
                with self._lock:
                    self.errors[f"{response.status_code} {error.get('type')}"] += 1
        job_id = payload.get("job_id") if response.status_code in (200, 202) else None
        if job_id:
            with self._lock:
                self.accepted.setdefault(job_id, time.monotonic())
        return job_id

    def submit_many(self, bodies: list[dict], threads: int = 16, path: str = "/jobs") -> list[str | None]:
        with futures.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda body: self.submit(body, path), bodies))

    # -- accounting -------------------------------------------------------

    def accept(self, job_id: str) -> None:
        """A job the API accepted outside `submit` (found otherwise, or by a client of the test's own)."""
        with self._lock:
            self.accepted.setdefault(job_id, time.monotonic())

    def finished(self, job_id: str, meta: dict) -> None:
        """A final result the client saw itself (a /predict that answered 200)."""
        with self._lock:
            self.seen_final.setdefault(job_id, (time.monotonic(), meta))

    def wait(self, timeout: float, since: float) -> Outcome:
        """Poll until every accepted job is final (or `timeout`); the outcome, timed from `since`.

        A job counts as final from the first time its final result was seen:
        published on its result channel, answered to the client, or read from
        the store (results expire after RESULT_TTL: a long run sees most of
        them published long before the end).
        """
        with self._lock:
            final_at = {j: at for j, (at, _) in self.seen_final.items() if j in self.accepted}
            results = {j: meta for j, (_, meta) in self.seen_final.items() if j in self.accepted}
        deadline = time.monotonic() + timeout
        ids = list(self.accepted)
        while True:
            pending = [j for j in ids if j not in final_at]
            if not pending or time.monotonic() > deadline:
                break
            try:
                raw = self.redis.mget([protocol.result_key(j) for j in pending])
            except (redis.RedisError, OSError):
                time.sleep(0.5)
                continue
            now = time.monotonic()
            for job_id, value in zip(pending, raw):
                if value is None:
                    continue
                meta = orjson.loads(value)
                if meta.get("status") in FINAL:
                    final_at[job_id] = now
                    results[job_id] = meta
            time.sleep(0.2)
        time.sleep(0.5)  # the last publishes reach the listener
        self._stop.set()
        failed: Counter = Counter()
        succeeded = 0
        for job_id, meta in results.items():
            if meta["status"] == "SUCCESS":
                succeeded += 1
            else:
                failed[(meta.get("result") or {}).get("exc_type", meta["status"])] += 1
            first = self.first_seen.get(job_id)
            if first is not None and orjson.loads(first).get("result") != meta.get("result"):
                self.changed.add(job_id)
        twice = {j for j, n in self.published.items() if n > 1} | self.changed
        late = self._late_results() - self._late_before
        restarted = self._restarted(ids)
        return Outcome(
            accepted=len(ids), succeeded=succeeded, failed=dict(failed), lost=len(ids) - len(final_at),
            run_twice=len(twice), late_dropped=late, restarted=restarted,
            seconds_to_final=round(max(final_at.values()) - since, 2) if final_at else None,
            answers={str(k): v for k, v in sorted(self.answers.items(), key=str)},
        )

    def records(self, ids) -> list[dict]:
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(protocol.job_key(job_id))
            return [{k.decode(): v.decode() for k, v in r.items()} for r in pipe.execute()]

    def _restarted(self, ids) -> int:
        return sum(1 for r in self.records(ids) if int(r.get("attempts", "1") or 1) > 1)

    def _late_results(self) -> int:
        total = 0
        try:
            for key in self.redis.scan_iter(match=protocol.BATCH_STATS_PREFIX + "*"):
                total += int(float(self.redis.hget(key, "late_results") or 0))
        except (redis.RedisError, OSError):
            pass
        return total

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._lock:
                pending = [j for j in list(self.accepted) if j not in self.seen_final]
            for start in range(0, len(pending), 500):
                chunk = pending[start:start + 500]
                try:
                    raw = self.redis.mget([protocol.result_key(j) for j in chunk])
                except (redis.RedisError, OSError):
                    break
                now = time.monotonic()
                for job_id, value in zip(chunk, raw):
                    meta = orjson.loads(value) if value is not None else {}
                    if meta.get("status") in FINAL:
                        with self._lock:
                            self.seen_final.setdefault(job_id, (now, meta))

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe("celery-task-meta-*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    job_id = message["channel"].decode()[len("celery-task-meta-"):]
                    meta = orjson.loads(message["data"])
                    with self._lock:
                        self.published[job_id] += 1
                        self.first_seen.setdefault(job_id, message["data"])
                        if meta.get("status") in FINAL:
                            self.seen_final.setdefault(job_id, (time.monotonic(), meta))
            except (redis.RedisError, OSError):
                time.sleep(0.2)  # Redis restarting: listen again
