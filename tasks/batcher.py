"""The batching loop: items of many jobs through one forward pass.

The consumer thread hands each received job to `submit()`. One device
thread per worker encodes the jobs' items, and runs the next batch the
moment the device is idle; while a batch runs, arrivals pile up and form
the next one. No timer: a lone request runs at once; MAX_WAIT_MS may add a
bounded wait for company.

All forward passes of a worker run on this one thread, whatever the
model: on the CPU, torch's OpenMP pool measured about 2x slower per pass
when a second thread also ran passes, and on one GPU concurrent passes
only queue behind each other.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from common import failpoints, logcontext
from common.budget import items_per_batch
from common.cache_keys import cache_key
from common.errors import DeadlineExceeded, InferenceFailed, ServiceError
from model_store.store import default_parameters
from tasks.fairness import FairShare
from tasks.intraop import IntraOpThreads
from tasks.job import Job
from tasks.lane_changes import LaneChanges
from tasks.lanes import Lane, encode
from tasks.planning import Item, jobs_of, plan_batch, run_isolating
from tasks.reporting import RERUN
from tasks.verdicts import apply_verdicts

log = logging.getLogger(__name__)

class Batcher(LaneChanges):
    """Runs the batches of every model a worker serves, on one device thread."""

    def __init__(self, settings, reporter, holder=lambda: "", on_room=lambda: None, spans=None):
        self.reporter = reporter
        self._spans = spans  # tasks.job_spans.BatchSpans when tracing is on, else None
        self.max_items = settings.max_batch_size
        self.max_tokens = settings.max_batch_tokens
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self.max_jobs = settings.worker_prefetch
        self.settings = settings  # what encode() validates jobs against
        self._holder = holder  # -> the holder id jobs are started under (tasks/sources.py)
        self._on_room = on_room  # called when finished jobs leave room for more (wakes the fetcher)
        self._cond = threading.Condition()
        self._lanes: dict[str, Lane] = {}
        self._actions: list = []  # model changes, run by the device thread between batches
        self._seq = itertools.count()
        self._share = FairShare()  # which model's lane runs next
        self._threads = IntraOpThreads()  # torch's threads per batch (device thread)
        self._stopping = False
        self._unstarted: list[Job] = []  # what join() hands back
        self._in_flight: set[Job] = set()  # jobs of the batch being run; guarded by the condition
        self._thread = threading.Thread(target=self._loop, name="device-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def add_model(self, model, on_ready=None) -> None:
        """Serve `model`; the device thread calibrates it, then calls `on_ready(model_id)`."""
        with self._cond:
            self._lanes.setdefault(model.model_id, Lane(model, on_ready))
            self._cond.notify()

    def remove_model(self, model_id: str, timeout: float = 300.0) -> list[Job]:
        """Stop serving `model_id` after the batch in flight.

        Jobs already started are finished first; the jobs not started are
        returned (the caller gives them back to the queue) and the lane goes.
        """
        return self._on_device(lambda: self._remove(model_id), timeout) or []

    def replace_model(self, model, timeout: float = 300.0):
        """Serve a new version of a model in place of the old one; return the old one.

        The device thread calibrates the new version and swaps it in between
        two batches: no job fails, the queue keeps being consumed.
        """
        return self._on_device(lambda: self._replace(model), timeout)

    def between_batches(self, action, timeout: float = 300.0):
        """Run `action` on the device thread between two batches (no model runs meanwhile); return its result."""
        return self._on_device(action, timeout)

    def last_used(self) -> dict[str, float]:
        """When each model last ran a batch (for least-recently-used eviction)."""
        return {model_id: lane.last_used for model_id, lane in list(self._lanes.items())}

    def serves(self, model_id: str) -> bool:
        return model_id in self._lanes

    def models(self) -> list[str]:
        return list(self._lanes)

    def active(self) -> int:
        """Jobs received and not yet finished, all models together."""
        return sum(lane.in_hand for lane in list(self._lanes.values()))

    def in_hand(self, model_id: str) -> int:
        """Jobs of `model_id` received and not yet finished."""
        lane = self._lanes.get(model_id)
        return lane.in_hand if lane is not None else 0

    def room(self, model_id: str) -> int:
        """How many more jobs of `model_id` to take now (see Lane.room); 0 before it is calibrated."""
        lane = self._lanes.get(model_id)
        if lane is None or not lane.calibrated:
            return 0
        held = self.active() + self.reporter.unacked()
        return lane.room(self.max_jobs - held, self.max_items, self.max_tokens)

    def worker_room(self) -> int | None:
        """How many more jobs to take now, all models together; None serving one model (room says it all).

        Each model's room is its own two batches' worth, so a worker serving
        50 models would hold 50 times what it holds serving one, and run it
        one after the other while the other workers sit idle. Together they
        hold at most what the model with the largest such hold would alone.
        """
        lanes = [lane for lane in list(self._lanes.values()) if lane.calibrated]
        if len(lanes) <= 1:
            return None
        cap = max(lane.hold_jobs(self.max_items, self.max_tokens) for lane in lanes)
        return max(0, cap - self.active())

    def submit(self, job: Job) -> bool:
        """Take a job (consumer thread); False when its model is not served here.

        The job's items are tokenized here, on the consumer thread, while
        the device thread runs the current batch.
        """
        for _ in range(3):  # again if the model was switched or removed while we encoded
            lane = self._lanes.get(job.model_id)
            if lane is None:
                return False
            model = lane.model
            encodings = encode(model, job, self.settings)
            if job.error is not None:
                self.reporter.finish(model.model_id, [job])
                return True
            todo = [i for i in range(len(job.inputs)) if i not in job.prefilled]
            job.set_cache_keys(model.fingerprint, model.task)
            with self._cond:
                if self._lanes.get(job.model_id) is not lane or lane.model is not model:
                    continue
                for index, enc in zip(todo, encodings):
                    item = Item(job, index, enc, enc.length, job.batch_key, next(self._seq), job.cache_keys[index])
                    if lane.shared.join_or_lead(item):
                        continue  # the same input waits already: it shares that item's pass
                    lane.incoming.append(item)
                    lane.length_avg += 0.05 * (enc.length - lane.length_avg)
                job.todo = len(todo)
                lane.took(job)
                self._cond.notify()
            break
        else:
            return False
        if not todo:  # everything came prefilled from the webapp's cache
            self._finish(lane, [job])
        return True

    def stop(self) -> list[Job]:
        """Stop taking batches; return the jobs not started, for the caller to hand back now.

        The batch in flight, and the jobs it started, are finished: `join()`.
        Every other job leaves at once, without waiting for that batch
        (a warm shutdown).
        """
        with self._cond:
            self._stopping = True
            unstarted = self._take_unstarted()
            self._cond.notify()
        return unstarted

    def join(self, timeout: float = 30.0) -> list[Job]:
        """Wait for the batch in flight and the started jobs; any job left over (to hand back)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the batch in flight did not finish within %.0fs", timeout)
            return []
        return self._unstarted

    def drop_unstarted(self, which) -> None:
        """Forget, between two batches, the jobs not yet started for which `which(job)` is true.

        Their messages went back to the queue without this worker (it was
        declared dead, or its broker connection dropped): another worker
        runs them, so this one must not. Returns at once: the caller (the
        heartbeat thread) must not wait for a long batch to end.
        """
        with self._cond:
            self._actions.append(lambda: self._drop(which))
            self._cond.notify()

    # -- the device thread -----------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._actions and not any(
                    lane.incoming or lane.waiting or not lane.calibrated for lane in self._lanes.values()
                ):
                    self._cond.wait()
                if self._stopping:
                    break
                actions, self._actions = self._actions, []
                for lane in self._lanes.values():
                    if lane.incoming:
                        lane.waiting.extend(lane.incoming)
                        lane.incoming = []
            for action in actions:
                action()
            try:
                for lane in list(self._lanes.values()):
                    if not lane.calibrated:
                        self._threads.whole_pool()
                        lane.calibrate(self.max_items, self.max_tokens)
                lane = self._next_lane()
                if lane is None:
                    continue
                if self.max_wait_s and self._linger(lane):
                    continue
                batch = plan_batch(lane.waiting, self._batch_items(lane), self.max_tokens, lane.cost)
                chosen = set(map(id, batch))
                lane.waiting = [it for it in lane.waiting if id(it) not in chosen]
                with self._cond:
                    # What a warm shutdown lets finish (see _take_unstarted).
                    self._in_flight = {job for job in jobs_of(batch) if not job.done}
                self._run(lane, batch)
                with self._cond:
                    self._in_flight = set()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("batching round failed; continuing")
                time.sleep(0.1)
        # Stopping: finish what was started, hand over the rest.
        self._unstarted = []
        for model_id in list(self._lanes):
            try:
                self._unstarted += self._remove(model_id)
            except Exception:  # noqa: BLE001 - the other lanes still stop cleanly
                log.exception("could not finish the started jobs of %s", model_id)

    def budgets(self) -> dict:
        """Per model: the fitted cost and the batch it implies, for the registry."""
        return {model_id: lane.budget(self.max_items, self.max_tokens) for model_id, lane in list(self._lanes.items())}

    def _next_lane(self) -> Lane | None:
        """The lane to run next, after dropping expired and unwanted items.

        Models with work share the device's time (tasks/fairness.py): one
        model's backlog holds another's job for at most the batch in flight.
        Within a lane the oldest item runs first (plan_batch): no job starves.
        """
        ready = []
        now = time.time()
        for lane in list(self._lanes.values()):
            self._expire(lane, now)
            lane.drop_dead()
            if lane.waiting:
                ready.append(lane)
        return self._share.pick(ready)

    def _expire(self, lane: Lane, now: float) -> None:
        """Fail the lane's jobs that waited past their deadline without starting: 504, never run."""
        expired = lane.overdue(now)
        for job in expired:
            job.fail(DeadlineExceeded(
                f"the job waited {now - job.received_at:.1f}s for the model, past its options.timeout"))
        if expired:
            self._finish(lane, expired)

    def _batch_items(self, lane: Lane) -> int:
        """MAX_BATCH_SIZE; fewer when the items' work has a budget (generation, zero-shot): what one request may do.

        Jobs with equal parameters share batches, so without this a batch of
        many jobs' items could hold the device (and every other model) far
        longer than the worst request the budget lets in.
        """
        model = lane.model
        fit = items_per_batch(model.task, lane.waiting[0].job.params, self.settings,
                              default_parameters(model.info, model.task))
        return self.max_items if fit is None else min(self.max_items, fit)

    def _linger(self, lane: Lane) -> bool:
        """True (after a short wait) when the batch should wait for more items."""
        if len(lane.waiting) >= self.max_items:
            return False
        remaining = lane.waiting[0].job.received_at + self.max_wait_s - time.time()
        if remaining <= 0:
            return False
        with self._cond:
            if not lane.incoming and not self._stopping:
                self._cond.wait(remaining)
        return True

    def _run(self, lane: Lane, batch: list[Item]) -> None:
        started_at = time.time()
        batch = self._start(lane, batch)
        if not batch:
            return
        lane.shared.start(batch)  # a job arriving now gets an item of its own: it must be started too
        if failpoints.active:
            failpoints.before_batch([it.job.inputs[it.index] for it in batch])
        params = batch[0].job.params
        runner = lane.runner
        fingerprint = lane.model.fingerprint

        def run(items):
            return runner.run([it.encoding for it in items], params)

        def on_outputs(items, outputs):
            for item, output in zip(items, outputs):
                for job, index in lane.shared.hand_out(item):
                    if not job.done:
                        job.outputs[index] = output
                        job.remaining -= 1
                        if job.cacheable and job.cache_keys[index] is not None:
                            # the weights that computed it, even if the model was switched meanwhile
                            job.cache_keys[index] = cache_key(fingerprint, lane.model.task, job.inputs[index],
                                                              job.params)

        def on_error(item, exc):
            if not isinstance(exc, ServiceError):
                # The exception's class only: its message may quote the input. A 424
                # carries no Python exception text.
                log.warning("model %s failed on an item of job %s: %s", lane.model.model_id, item.job.id,
                            type(exc).__name__, extra=logcontext.job_fields(item.job))
                exc = InferenceFailed(f"the model failed on inputs[{item.index}]; see the worker's log")
            for job, _ in lane.shared.hand_out(item):
                job.fail(exc)

        longest = max(it.length for it in batch)
        threads = self._threads.for_batch(runner.device, lane.cost.quiet_time(len(batch), longest))
        jobs = jobs_of(batch)
        fields = logcontext.batch_fields(jobs, lane.model.model_id, len(batch))
        forward_at, started = time.time(), time.perf_counter()
        with logcontext.bound(**fields):  # what the model logs meanwhile names the batch's jobs
            passes = run_isolating(batch, run, on_outputs, on_error)
        elapsed = time.perf_counter() - started
        tokens, padded = sum(it.length for it in batch), longest * len(batch)
        log.info("batch: %s, %d items, longest %d tokens, %d padded tokens (%d real), %d job(s), forward %.1f ms%s%s",
                 lane.model.model_id, len(batch), longest, padded, tokens, len(jobs), elapsed * 1000,
                 f" on {threads} thread{'s' if threads > 1 else ''}" if threads else "",
                 f" in {passes} passes (an item failed)" if passes > 1 else "",
                 extra={**fields, "tokens": tokens, "padded_tokens": padded,
                        "forward_ms": round(elapsed * 1000, 2), "passes": passes, "threads": threads})
        lane.last_used = time.time()
        self._share.charge(lane, elapsed)
        if passes == 1:
            lane.cost.observe(len(batch), longest, elapsed)
        if self._spans is not None:
            self._spans.batch_ran(lane.model.model_id, jobs, len(batch), started_at, forward_at, elapsed, passes)
        for job in jobs:
            job.forward_s += elapsed
            job.largest_batch = max(job.largest_batch, len(batch))
        self._finish(lane, [job for job in jobs if job.done], batch_size=len(batch), forward_s=elapsed,
                     passes=passes, tokens=tokens, padded_tokens=padded)

    def _start(self, lane: Lane, batch: list[Item]) -> list[Item]:
        """Mark the batch's new jobs started; the items that may run now, together (tasks/verdicts.py)."""
        jobs = jobs_of(batch)
        fresh = [job for job in jobs if job.started_at is None and not job.done]
        if not fresh:
            return batch
        verdicts = self.reporter.start(fresh, self._holder(), alone=len(jobs) == 1)
        if RERUN in verdicts:
            # It may kill this worker: first store every result finished so far,
            # or their jobs would count a death they had no part in.
            self.reporter.drain()
        ended = apply_verdicts(fresh, verdicts, self.reporter.max_deliveries)
        if ended:
            self._finish(lane, ended)
        for it in batch:
            it.params_key = it.job.batch_key
        lane.shared.forget([it for it in batch if not it.alive])
        batch = [it for it in batch if it.alive]
        if len({it.params_key for it in batch}) > 1:
            # Some must run alone now: plan again with their new keys.
            lane.waiting = sorted(lane.waiting + batch, key=lambda it: it.seq)
            return []
        return batch

    def _finish(self, lane: Lane, jobs: list[Job], **batch_stats) -> None:
        self.reporter.finish(lane.model.model_id, jobs, **batch_stats)
        if jobs:
            with self._cond:
                lane.let_go(jobs)
            self._on_room()
