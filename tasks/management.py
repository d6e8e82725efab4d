"""Loading, unloading and switching models on a live worker.

Control commands (tasks/control.py) run on the consumer thread and must
answer at once, so they only queue a change here; a manager thread carries
changes out one at a time. A load reads the weights on this thread, the
device thread calibrates the model, and only then does the worker start
consuming `infer.<model_id>`. An unload stops consuming first, finishes
the jobs already started, gives the others back to the queue, then drops
the model and hands its memory back to the operating system.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import threading

import psutil
import redis

from common import protocol
from common.errors import ModelNotFound, ServiceError
from common.protocol import queue_for

log = logging.getLogger(__name__)

# How long the manager waits for the consumer thread to add or cancel a queue.
CONSUMER_STEP_S = 30.0


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def release_memory(device: str) -> None:
    """Give freed memory back: collect cycles, trim glibc's heap, empty CUDA's cache."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator keeps what it keeps
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def cuda_bytes(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.memory_allocated(device))


class ModelManager:
    """Carries out load / unload / switch requests, one at a time, off the consumer thread."""

    def __init__(self, serving):
        self.serving = serving
        self.states: dict[str, dict] = {}  # model_id -> {"state": ..., "error"?: ...} while not plainly loaded
        self.memory: dict[str, dict] = {}  # model_id -> memory readings around its last load/unload
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sources = redis.Redis.from_url(serving.settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)

    def start(self) -> "ModelManager":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)

    # -- requests (any thread; control commands call these) ---------------

    def state_of(self, model_id: str) -> str | None:
        if model_id in self.states:
            return self.states[model_id]["state"]
        if self.serving.batcher.serves(model_id):
            return protocol.LOADED
        return None

    def request_load(self, model_id: str, task: str | None = None) -> dict:
        state = self.state_of(model_id)
        if state in (protocol.LOADED, protocol.LOADING):
            return {"ok": f"{model_id}: {state}", "model_id": model_id, "state": state}
        if not self.serving.registry.store.exists(self.source_of(model_id)):
            return {"error": f"model {model_id!r} is not in the store", "model_id": model_id}
        self.states[model_id] = {"state": protocol.LOADING}
        self.serving.heartbeat_poke()
        self._queue.put((self._load, model_id, task))
        return {"ok": f"{model_id}: loading", "model_id": model_id, "state": protocol.LOADING}

    def request_unload(self, model_id: str) -> dict:
        state = self.state_of(model_id)
        if state is None or state == protocol.LOAD_FAILED:
            self.states.pop(model_id, None)
            return {"ok": f"{model_id}: not loaded", "model_id": model_id, "state": "unloaded"}
        if state != protocol.UNLOADING:
            self.states[model_id] = {"state": protocol.UNLOADING}
            self.serving.heartbeat_poke()
            self._queue.put((self._unload, model_id))
        return {"ok": f"{model_id}: unloading", "model_id": model_id, "state": protocol.UNLOADING}

    def request_switch(self, model_id: str, source: str) -> dict:
        if not self.serving.registry.store.exists(source):
            return {"error": f"model {source!r} is not in the store", "model_id": model_id}
        if self.state_of(model_id) is None:
            return {"ok": f"{model_id}: not loaded here", "model_id": model_id, "state": "unloaded"}
        self._queue.put((self._switch, model_id, source))
        return {"ok": f"{model_id}: switching to {source}", "model_id": model_id, "state": "switching"}

    def source_of(self, model_id: str) -> str:
        """The directory serving `model_id`: itself, or what a switch named."""
        try:
            source = self._sources.hget(protocol.MODEL_SOURCES_KEY, model_id)
        except (redis.RedisError, OSError):
            source = None
        return source.decode() if source else model_id

    # -- the manager thread ------------------------------------------------

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            action, *args = work
            try:
                action(*args)
            except Exception:  # noqa: BLE001 - the manager must survive anything
                log.exception("%s%s failed", action.__name__, tuple(args))

    def _load(self, model_id: str, task: str | None) -> None:
        serving = self.serving
        try:
            self._make_room(model_id)
            release_memory(serving.device)
            self.memory[model_id] = {"rss_before_load": rss_bytes(), "cuda_before_load": cuda_bytes(serving.device)}
            loaded = serving.registry.load(model_id, task, self.source_of(model_id))
            self.memory[model_id]["weights_bytes"] = loaded.runner.memory_bytes()
            serving.batcher.add_model(loaded, on_ready=self._ready)
        except (ServiceError, ModelNotFound) as exc:
            self._failed(model_id, exc.message)
        except Exception as exc:  # noqa: BLE001 - a broken model directory must not kill the worker
            log.exception("loading %s failed", model_id)
            self._failed(model_id, f"{type(exc).__name__}: {exc}")

    def _failed(self, model_id: str, reason: str) -> None:
        self.states[model_id] = {"state": protocol.LOAD_FAILED, "error": reason}
        self.serving.heartbeat_poke()

    def _ready(self, model_id: str) -> None:
        """Device thread: the model is calibrated; consume its queue from now on."""
        # Weights are memory-mapped and read lazily: only now, after the
        # calibration passes touched them all, does RSS show the model.
        record = self.memory.setdefault(model_id, {})
        record.update(rss_after_load=rss_bytes(), cuda_after_load=cuda_bytes(self.serving.device))
        log.info("%s ready on %s: RSS %+.1f MB", model_id, self.serving.device,
                 (record["rss_after_load"] - record.get("rss_before_load", record["rss_after_load"])) / 1e6)

        def start_consuming():
            self.serving.consumer.add_task_queue(queue_for(model_id))
            self.states.pop(model_id, None)
            self.serving.heartbeat_poke()

        self.serving.consumer.call_soon(start_consuming)

    def _unload(self, model_id: str) -> None:
        serving = self.serving
        self._on_consumer(lambda: serving.consumer.cancel_task_queue(queue_for(model_id)))
        for job in serving.batcher.remove_model(model_id):
            self._on_consumer(lambda job=job: job.reject(log, serving.consumer.connection_errors, True))
        before = rss_bytes()
        old = serving.registry.unload(model_id)
        del old
        release_memory(serving.device)
        after = rss_bytes()
        record = self.memory.setdefault(model_id, {})
        record.update(rss_before_unload=before, rss_after_unload=after, cuda_after_unload=cuda_bytes(serving.device))
        weights = record.get("weights_bytes") or 0
        if weights:
            record["returned_fraction"] = round((before - after) / weights, 3)
        log.info("unloaded %s: RSS %.1f -> %.1f MB (%s of its %.1f MB of weights)", model_id, before / 1e6,
                 after / 1e6, record.get("returned_fraction"), weights / 1e6)
        self.states.pop(model_id, None)
        serving.heartbeat_poke()

    def _switch(self, model_id: str, source: str) -> None:
        serving = self.serving
        current = serving.registry.loaded().get(model_id)
        if current is None:
            return
        if current.source == source and current.fingerprint == serving.registry.store.describe(source).fingerprint:
            return  # already serving exactly these files
        self.states[model_id] = {"state": protocol.LOADED, "switching_to": source}
        try:
            new = serving.registry.build(model_id, current.task, source)
            old = serving.batcher.replace_model(new)
            serving.registry.replace(new)
            log.info("%s now served from %s (fingerprint %s -> %s)", model_id, source, current.fingerprint,
                     new.fingerprint)
            del old, current
            release_memory(serving.device)
        except Exception as exc:  # noqa: BLE001 - the old version keeps serving
            log.exception("switching %s to %s failed", model_id, source)
            self.states[model_id] = {"state": protocol.LOADED, "error": f"switch to {source} failed: {exc}"}
            serving.heartbeat_poke()
            return
        self.states.pop(model_id, None)
        serving.heartbeat_poke()

    def _make_room(self, model_id: str) -> None:
        """Unload the least recently used model when this one would pass MAX_MODELS_PER_WORKER."""
        loaded = self.serving.registry.loaded()
        cap = self.serving.settings.max_models_per_worker
        if model_id in loaded or len(loaded) < cap:
            return
        last_used = self.serving.batcher.last_used()
        victim = min(loaded, key=lambda m: last_used.get(m, 0.0))
        log.info("MAX_MODELS_PER_WORKER=%d: unloading %s, the least recently used, to load %s", cap, victim, model_id)
        self.states[victim] = {"state": protocol.UNLOADING}
        self._unload(victim)

    def _on_consumer(self, fn) -> None:
        """Run `fn` on the consumer thread (which owns the broker connection) and wait for it."""
        done = threading.Event()

        def run():
            try:
                fn()
            finally:
                done.set()

        self.serving.consumer.call_soon(run)
        if not done.wait(CONSUMER_STEP_S):
            log.warning("the consumer thread did not run a step within %.0fs", CONSUMER_STEP_S)
