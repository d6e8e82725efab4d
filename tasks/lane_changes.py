"""Changes to the batcher's lanes between two batches, on the device thread.

A model unloaded or switched to a new version, jobs a worker must let go
of: each is a command another thread queues (`_on_device`) and the device
thread carries out between two forward passes, so no batch ever sees a
lane half-changed. A mixin of Batcher: it works on the batcher's lanes,
condition and batch runner.
"""

from __future__ import annotations

import logging
import threading

from common import logcontext
from common.errors import InferenceFailed, ServiceError
from tasks.calibration import calibrate
from tasks.costmodel import CostModel
from tasks.job import Job
from tasks.planning import Item, jobs_of, plan_batch

log = logging.getLogger(__name__)


class LaneChanges:
    """The device-thread side of add/remove/replace/drop (see Batcher)."""

    def _on_device(self, action, timeout: float):
        """Run `action` on the device thread between batches and return its result."""
        done = threading.Event()
        box = {}

        def run():
            try:
                box["result"] = action()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box["error"] = exc
            finally:
                done.set()

        with self._cond:
            self._actions.append(run)
            self._cond.notify()
        if not done.wait(timeout):
            raise TimeoutError("the device thread did not get to the change in time")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _take_unstarted(self) -> list[Job]:
        """Under the condition: the jobs not started nor in the batch being started; they leave.

        The device thread sets `_in_flight` under the condition before it
        starts a batch, and drops items no job wants: a job taken here is
        never run here.
        """
        taken = []
        for lane in list(self._lanes.values()):
            items = lane.incoming + list(lane.waiting)
            jobs = [job for job in jobs_of(items)
                    if job.started_at is None and not job.done and job not in self._in_flight]
            for job in jobs:
                job.skipped = True  # done here: not run, not stored, not acked (it goes back)
            lane.let_go(jobs)
            taken += jobs
        return taken

    def _remove(self, model_id: str) -> list[Job]:
        """Device thread: finish the lane's started jobs, return the others, drop the lane."""
        lane = self._lanes.get(model_id)
        if lane is None:
            return []
        with self._cond:
            lane.waiting.extend(lane.incoming)
            lane.incoming = []
        while True:
            lane.waiting = [it for it in lane.waiting if it.alive]
            started = [it for it in lane.waiting if any(job.started_at is not None for job in it.jobs())]
            if not started:
                break
            batch = plan_batch(started, self.max_items, self.max_tokens, lane.cost)
            chosen = set(map(id, batch))
            lane.waiting = [it for it in lane.waiting if id(it) not in chosen]
            self._run(lane, batch)
        unstarted = [job for job in jobs_of(lane.waiting) if not job.done]
        with self._cond:
            del self._lanes[model_id]
            lane.let_go(unstarted)
        return unstarted

    def _drop(self, which) -> int:
        """Device thread: forget the unstarted jobs `which` picks, in every lane."""
        dropped = 0
        for lane in list(self._lanes.values()):
            with self._cond:
                lane.waiting.extend(lane.incoming)
                lane.incoming = []
            gone = [job for job in jobs_of(lane.waiting)
                    if job.started_at is None and not job.done and which(job)]
            for job in gone:
                job.skipped = True  # done here: no result, no ack (its message is back in the queue)
            lane.drop_dead()
            with self._cond:
                lane.let_go(gone)
            dropped += len(gone)
        if dropped:
            log.warning("dropped %d job(s) not started: their messages went back to the queue without this "
                        "worker, and another one runs them", dropped)
        return dropped

    def _replace(self, model):
        """Device thread: calibrate the new version, swap it in, re-encode what waits."""
        lane = self._lanes.get(model.model_id)
        if lane is None:
            return None
        cost = CostModel()
        self._threads.whole_pool()
        calibrate(model.runner, cost, model.model_id, self.max_items, self.max_tokens)
        with self._cond:
            old = lane.model
            lane.model, lane.runner, lane.cost = model, model.runner, cost
            lane.waiting.extend(lane.incoming)
            lane.incoming = []
        # Items not yet run were tokenized (and keyed) for the old version:
        # redo them, one item per input again; started jobs finish as they are.
        started = [it for it in lane.waiting if any(job.started_at is not None for job in it.jobs())]
        redo = [job for job in jobs_of(lane.waiting)
                if job.started_at is None and not job.done]
        failed = []
        keep = started
        lane.shared.clear()
        for job in redo:
            todo = [i for i in range(len(job.inputs)) if i not in job.prefilled and job.outputs[i] is None]
            try:
                encodings = lane.runner.encode([job.inputs[i] for i in todo], job.params)
            except Exception as exc:  # noqa: BLE001 - the new version refuses this input
                if not isinstance(exc, ServiceError):
                    # The exception's text stays in this log; the client gets a plain sentence.
                    log.warning("job %s: the new version of %s cannot encode its inputs: %s: %s",
                                job.id, job.model_id, type(exc).__name__, exc, extra=logcontext.job_fields(job))
                    exc = InferenceFailed("the new version of the model cannot encode the inputs")
                job.fail(exc)
                failed.append(job)
                continue
            job.set_cache_keys(model.fingerprint, model.task)
            keep += [Item(job, i, enc, enc.length, job.batch_key, next(self._seq))
                     for i, enc in zip(todo, encodings)]
        keep.sort(key=lambda it: (it.job.received_at, it.index))
        lane.waiting = keep
        if failed:
            self._finish(lane, failed)
        return old
