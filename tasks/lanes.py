"""One model's lane in the batcher: its jobs, its cost model, how much more it takes.

The batcher (tasks/batcher.py) keeps a Lane per loaded model. Here is what
belongs to one lane alone: the bookkeeping of the jobs it holds, how many
more it should take (`room`), which of its jobs are past their deadline,
encoding a job for its model, and timing the model on this device
(`calibrate`, by tasks/calibration.py).
"""

from __future__ import annotations

import logging
import time

from common import logcontext
from common.budget import check_encoded_budget, check_request_budget
from common.errors import InferenceFailed, ServiceError
from common.params import validate_parameters
from model_store.store import default_parameters
from tasks.calibration import calibrate
from tasks.coalescing import SharedItems
from tasks.costmodel import CostModel
from tasks.job import Job
from tasks.planning import Item, jobs_of

log = logging.getLogger(__name__)

# A worker holds two batches' worth of items (by its cost model), and at
# least this many: enough for batching to start whatever the calibration said.
MIN_HELD_ITEMS = 16


class Lane:
    """One loaded model's jobs: received, and encoded items waiting to run."""

    def __init__(self, model, on_ready=None):
        self.model = model
        self.runner = model.runner
        self.on_ready = on_ready  # called (device thread) once calibrated
        self.last_used = time.time()
        self.incoming: list[Item] = []  # encoded on the fetcher/consumer thread; guarded by the condition
        self.waiting: list[Item] = []  # device thread only
        self.shared = SharedItems()  # identical inputs of jobs in flight share one item
        self.in_hand = 0  # jobs received and not finished
        self.items_in_hand = 0  # their items still to compute
        self.length_avg = 32.0  # tokens per item, a moving average (sizes the room for more jobs)
        self.items_per_job = 1.0  # items to compute per job, a moving average
        self.cost = CostModel()
        self.calibrated = False
        self.served_s = 0.0  # device seconds charged to this model (tasks/fairness.py)
        self.last_turn = -1  # number of the last batch it ran

    def oldest(self) -> float | None:
        """Receipt time of the oldest job with work here, or None when idle."""
        if self.waiting:
            return self.waiting[0].job.received_at
        if self.incoming:
            return self.incoming[0].job.received_at
        return None

    def calibrate(self, max_items: int, max_tokens: int) -> None:
        """Time the model on this device (device thread, before its first job), then call on_ready."""
        self.calibrated = True
        calibrate(self.runner, self.cost, self.model.model_id, max_items, max_tokens)
        if self.on_ready is not None:
            self.on_ready(self.model.model_id)

    def overdue(self, now: float) -> list[Job]:
        """Jobs waiting here unstarted past their deadline (options.timeout, Celery's `expires`)."""
        return [job for job in jobs_of(self.waiting)
                if job.expires_at is not None and job.started_at is None and now > job.expires_at
                and not job.done]

    def drop_dead(self) -> None:
        """Waiting items no job wants any more leave the lane."""
        dead = [it for it in self.waiting if not it.alive]
        if dead:
            self.shared.forget(dead)
            self.waiting = [it for it in self.waiting if it.alive]

    def room(self, jobs_room: int, max_items: int, max_tokens: int) -> int:
        """How many more jobs to take now: two batches' worth, by the cost model.

        A worker holds no more than it can run soon, so that with several
        workers none sits idle while another holds a backlog; two batches,
        so the next one is ready the moment the device is free. Never more
        than `jobs_room` (what WORKER_PREFETCH leaves); at least one job when
        there is room.
        """
        items_room = self._hold_items(max_items, max_tokens) - self.items_in_hand
        if items_room <= 0 or jobs_room <= 0:
            return 0
        return min(jobs_room, max(1, int(items_room / max(self.items_per_job, 1.0))))

    def hold_jobs(self, max_items: int, max_tokens: int) -> int:
        """The jobs this lane holds at most when it has none: its two batches' worth."""
        return max(1, int(self._hold_items(max_items, max_tokens) / max(self.items_per_job, 1.0)))

    def _hold_items(self, max_items: int, max_tokens: int) -> int:
        best = self.cost.best_batch(max(1, round(self.length_avg)), max_items, max_tokens)
        # A floor, so that a calibration skewed by a busy machine cannot starve batching.
        return max(2 * best, min(MIN_HELD_ITEMS, 2 * max_items))

    def budget(self, max_items: int, max_tokens: int) -> dict:
        """The fitted cost and the batch it implies at a few lengths (the worker registry shows it)."""
        return {"calibrated": self.calibrated, "cost": self.cost.describe(),
                "best_batch": {str(n): self.cost.best_batch(n, max_items, max_tokens) for n in (16, 32, 64, 128)}}

    def took(self, job: Job) -> None:
        """Count a job received (under the batcher's condition)."""
        self.in_hand += 1
        self.items_in_hand += job.todo
        self.items_per_job += 0.05 * (job.todo - self.items_per_job)

    def let_go(self, jobs: list[Job]) -> None:
        """Count jobs finished or given away (under the batcher's condition)."""
        self.in_hand -= len(jobs)
        self.items_in_hand -= sum(job.todo for job in jobs)


def encode(model, job: Job, settings) -> list:
    """The job's items tokenized for `model`; [] and the job failed on a bad input.

    The webapp validated the job; a message from another client may not
    have been: its parameters and its budget (common/budget.py) are checked again
    here, and the job runs with the parameters as validated.
    """
    try:
        defaults = default_parameters(model.info, model.task)
        params = validate_parameters(model.task, job.params, defaults, settings.max_new_tokens)
        todo_inputs = [item for i, item in enumerate(job.inputs) if i not in job.prefilled]
        check_request_budget(model.task, params, todo_inputs, settings, defaults, model.info.mask_token)
        job.use_params(params)
        encodings = model.runner.encode(todo_inputs, job.params)
        check_encoded_budget(model.task, job.params, [enc.length for enc in encodings], settings)
        return encodings
    except ServiceError as exc:
        job.fail(exc)
    except Exception as exc:  # noqa: BLE001 - a tokenizer crash fails only this job
        # The exception's text stays in this log; the client gets a plain sentence.
        log.warning("job %s: %s cannot encode its inputs: %s: %s", job.id, job.model_id, type(exc).__name__, exc,
                    extra=logcontext.job_fields(job))
        job.fail(InferenceFailed("the model's tokenizer cannot encode the inputs"))
    return []

