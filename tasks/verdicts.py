"""What the start of a job may answer, and what it means for the job (tasks/reporting.py decides).

Starting a job records it in Redis (`Reporter.start`); the answer says
whether it runs: a job started before and never finished (its worker died,
maybe of it) runs in a batch of its own, so a poison job takes no other job
down with it again; one started MAX_DELIVERIES times fails with
worker_lost; cancelled jobs, jobs another worker finished, and jobs of a
holder declared dead meanwhile (given back to their queue) do not run.
"""

from __future__ import annotations

import logging

from common import logcontext
from common.errors import WorkerLost
from tasks.job import Job
from tasks.reporting import CANCELLED, FINISHED_ELSEWHERE, GIVEN_BACK, KILLS_WORKERS, RUN_ALONE

log = logging.getLogger(__name__)


def apply_verdicts(jobs: list[Job], verdicts: list, max_deliveries: int) -> list[Job]:
    """Mark each job as its start's verdict says; the jobs that end here, unrun."""
    ended = []
    for job, verdict in zip(jobs, verdicts):
        if verdict == CANCELLED:
            job.cancelled = True
        elif verdict in (FINISHED_ELSEWHERE, GIVEN_BACK):
            job.skipped = True
        elif verdict == KILLS_WORKERS:
            job.fail(WorkerLost(
                f"the worker running this job died each of the {max_deliveries} times it "
                "ran it (MAX_DELIVERIES); it is not run again"))
            log.error("job %s: its worker died each of the %d times it ran it; failed as worker_lost",
                      job.id, max_deliveries, extra=logcontext.job_fields(job))
        elif verdict == RUN_ALONE:
            job.alone = True
            log.warning("job %s was running when a worker died; it runs alone now", job.id,
                        extra=logcontext.job_fields(job))
        if job.done:
            ended.append(job)
    return ended
