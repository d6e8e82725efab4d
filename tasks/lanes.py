"""One model's lane in the batcher: its jobs, its cost model, how much more it takes.

The batcher (tasks/batcher.py) keeps a Lane per loaded model. Here is what
belongs to one lane alone: the bookkeeping of the jobs it holds, how many
more it should take (`room`), encoding a job for its model, and timing the
model on this device (`calibrate`).
"""

from __future__ import annotations

import logging
import time

from common import logcontext
from common.budget import check_encoded_budget, check_request_budget
from common.errors import InferenceFailed, ServiceError
from common.params import validate_parameters
from model_store.store import default_parameters
from tasks.costmodel import CALIBRATION_SHAPES, CostModel, measure
from tasks.job import Job
from tasks.planning import Item

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
        self.leaders: dict[str, Item] = {}  # cache key -> the item computing it; guarded by the condition
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

    def room(self, jobs_room: int, max_items: int, max_tokens: int) -> int:
        """How many more jobs to take now: two batches' worth, by the cost model.

        A worker holds no more than it can run soon, so that with several
        workers none sits idle while another holds a backlog; two batches,
        so the next one is ready the moment the device is free. Never more
        than `jobs_room` (what WORKER_PREFETCH leaves); at least one job when
        there is room.
        """
        best = self.cost.best_batch(max(1, round(self.length_avg)), max_items, max_tokens)
        # A floor, so that a calibration skewed by a busy machine cannot starve batching.
        items_room = max(2 * best, min(MIN_HELD_ITEMS, 2 * max_items)) - self.items_in_hand
        if items_room <= 0 or jobs_room <= 0:
            return 0
        return min(jobs_room, max(1, int(items_room / max(self.items_per_job, 1.0))))

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


def calibrate(lane: Lane, max_items: int, max_tokens: int) -> None:
    """Fit the lane's cost model from a few timed batch shapes (device thread)."""
    runner = lane.runner
    limit = getattr(runner, "max_length", 512)
    try:
        params = getattr(runner, "calibration_params", {})
        runner.run([runner.dummy_encoding(min(32, limit))] * 4, params)  # warm-up

        def timed(items: int, length: int) -> float:
            batch = [runner.dummy_encoding(length)] * items
            started = time.perf_counter()
            runner.run(batch, params)
            return time.perf_counter() - started

        shapes = list(dict.fromkeys((items, min(length, limit)) for items, length in CALIBRATION_SHAPES))
        samples = measure(timed, shapes)
        lane.cost.calibrate(samples)
    except Exception:  # noqa: BLE001 - a model that cannot calibrate still serves
        log.exception("calibration of %s failed; batches will be as large as the caps allow", lane.model.model_id)
        return
    log.info("%s: forward cost %s; best batch at 32 tokens: %d items, at 128 tokens: %d",
             lane.model.model_id, lane.cost.describe(), lane.cost.best_batch(32, max_items, max_tokens),
             lane.cost.best_batch(128, max_items, max_tokens))
