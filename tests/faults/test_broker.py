"""Redis restarts under load (with the append-only file `make run` configures): no accepted job lost.

While Redis is down the API answers 503 broker_unavailable (never a 500,
never a hang past options.wait); every process reconnects by itself.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import ALLOWED, Load, ready


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
