"""Redis restarts under load (with the append-only file `make run` configures): no accepted job lost.

While Redis is down the API answers 503 broker_unavailable (never a 500,
never a hang past options.wait); every process reconnects by itself.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.test_workers import bodies, ready

ALLOWED = {"200", "202", "503"}


class Load:
    """A client submitting jobs at a steady pace (POST /jobs, and every third POST /predict)."""

    def __init__(self, ledger, per_second: float = 20.0, model_id: str = "minilm"):
        self.ledger = ledger
        self.model_id = model_id
        self.interval = 1.0 / per_second
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(4)]
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            body = bodies(1, start=k * 700 + i * 2, model_id=self.model_id)[0]
            if i % 3 == 2:
                body["options"]["wait"] = 5
                self.ledger.submit(body, path="/predict", timeout=30)
            else:
                self.ledger.submit(body, timeout=30)
            i += 1
            self._stop.wait(self.interval * 4)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_a_redis_restart_under_load_loses_no_accepted_job(cluster, report, kill):
    """Redis stopped 3 s mid-load and started again: 200/202/503 only meanwhile; every accepted job succeeds."""
    c = cluster()
    worker, app = ready(c.worker("w1", preload_models="minilm"), c.webapp())
    ledger = c.ledger(app)
    load = Load(ledger)
    time.sleep(3.0)
    accepted_before = dict(ledger.accepted)
    t0 = time.monotonic()
    c.restart_redis(kill=kill, down_s=3.0)
    time.sleep(5.0)
    load.stop()
    outcome = ledger.wait(timeout=120, since=t0)
    last_second = sum(1 for at in accepted_before.values() if at > t0 - 1.0)
    how = "kill -9" if kill else "SIGTERM"
    report(fault=f"Redis {how} under load, down 3 s, started again (appendonly yes, appendfsync everysec)",
           broker="redis", outcome=outcome,
           note=f"answers while it was down: {dict(ledger.errors) or 'none refused'}; "
                f"{last_second} job(s) accepted in the second before the {how}; the worker did not restart")
    assert set(outcome.answers) <= ALLOWED, outcome.answers
    assert not ledger.bad_answers and set(ledger.errors) <= {"503 broker_unavailable"}
    assert worker.alive() and "Unrecoverable error" not in worker.log()
    assert outcome.failed == {} and outcome.run_twice == 0
    if kill:
        # The append-only file is written before Redis answers and fsynced every second: a killed
        # process loses nothing written; a lost machine at most the last second (README).
        assert outcome.lost <= last_second
    else:
        assert outcome.lost == 0
