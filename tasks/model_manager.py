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
import json
import logging
import os
import queue
import sys
import threading
import time

import psutil
import redis

from common import protocol
from common.errors import ModelNotFound, ServiceError
from common.placement import Placement

log = logging.getLogger(__name__)


def least_recently_used(candidates, last_used: dict[str, float], keep=frozenset()) -> str | None:
    """The model of `candidates` that ran longest ago (never = first), leaving out `keep`; None if none."""
    allowed = [m for m in candidates if m not in keep]
    return min(allowed, key=lambda m: last_used.get(m, 0.0)) if allowed else None


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def gpu_memory(device: str) -> dict | None:
    """CUDA memory this process has: `allocated` to tensors, `reserved` by its caching allocator (None on CPU).

    `reserved` is what the device lends this process, what other processes
    on the GPU cannot have: the figure to watch against the card's memory.
    `free` and `total` are the card's; the placement assigner (common/assignment.py)
    places a model only where `free` holds its files.
    """
    if not device.startswith("cuda"):
        return None
    import torch

    free, total = torch.cuda.mem_get_info(device)  # the whole card's, every process included
    return {"allocated": int(torch.cuda.memory_allocated(device)), "reserved": int(torch.cuda.memory_reserved(device)),
            "free": int(free), "total": int(total)}


M_ARENA_MAX = -8  # glibc's mallopt() parameter: how many malloc arenas the process may have


def one_malloc_arena() -> bool:
    """Have every thread of this process allocate from glibc's main arena; True if set here.

    glibc gives threads that allocate at once arenas of their own (up to 8
    per core). malloc_trim() gives back the free pages inside every arena
    but shrinks only the main arena's top: another arena keeps the free
    space at its top until it passes the trim threshold, which glibc raises
    up to 64 MB as large blocks are freed. A model's calibration on the
    device thread left 25-55 MB there after its unload (bench/unload.py:
    the first cycle returned 53-66 % of what the load took, against 87 %
    with one arena). Threads then share the arena's lock: minilm at 64
    clients served as fast or faster (/tmp A/B, alternated, two runs each).
    Must run before the worker starts its threads (an arena, once made,
    stays). MALLOC_ARENA_MAX in the environment wins: it is left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False  # not glibc


def free_mkl_buffers() -> bool:
    """Give back the scratch buffers MKL keeps for its matrix products; True if there were MKL and torch.

    torch's CPU builds for x86 link Intel MKL in, whose memory manager keeps
    a product's buffers for the next one: ~10 MB after minilm's first passes
    (/tmp: a random minilm-shaped BertModel run and dropped kept +9.7 MB
    after malloc_trim, +0.4 MB with this call), which its unload did not
    give back. MKL allocates them again at the next product. MKL does not
    document the call as safe while another thread is in MKL, so it runs
    on the device thread, between batches (Batcher.between_batches).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        library.mkl_serv_free_buffers()  # mkl_free_buffers, by the name MKL exports in torch's library
    except (OSError, AttributeError):
        return False  # no MKL in this build (ARM, macOS): nothing kept this way
    return True


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
        self.placement = Placement(self._sources)
        self.name = serving.consumer.hostname
        self._pending = 0  # requests queued or running on the manager thread
        # Counts changes of `states`; replies and the registry entry carry it,
        # so the webapp can tell an entry written before its request from one after.
        self.version = 0
        self._pending_lock = threading.Lock()
        # Starting and stopping to consume a model's queue happen in the order
        # their decisions were made (a load's calibration ends on the device
        # thread, an unload runs on the manager thread).
        self._serve_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)
        # The models this worker was started to serve (PRELOAD_MODELS, `-Q infer.<id>`;
        # tasks/serving.py adds the latter): an on-demand load never evicts them.
        self.preloaded: frozenset[str] = frozenset(serving.settings.preload_models)

    def start(self) -> "ModelManager":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)

    # -- requests (any thread; control commands call these) ---------------

    def state_of(self, model_id: str) -> str | None:
        change = self.states.get(model_id)  # one read: other threads pop entries
        if change is not None:
            return change["state"]
        if self.serving.batcher.serves(model_id):
            return protocol.LOADED
        return None

    def request_load(self, model_id: str, task: str | None = None, on_demand: bool = False) -> dict:
        """Queue a load; `on_demand` (AUTOLOAD) loads never evict a preloaded model."""
        state = self.state_of(model_id)
        if state in (protocol.LOADED, protocol.LOADING):
            return {"ok": f"{model_id}: {state}", "model_id": model_id, "state": state, "version": self.version}
        if not self.serving.models.store.exists(self.source_of(model_id)):
            self._placement(lambda: self.placement.drop(self.name, model_id))
            return {"error": f"model {model_id!r} is not in the store", "model_id": model_id}
        self._placement(lambda: self.placement.want(self.name, model_id, task))
        self.states[model_id] = {"state": protocol.LOADING}
        self._changed()
        self._submit(self._load, model_id, task, on_demand)
        return {"ok": f"{model_id}: loading", "model_id": model_id, "state": protocol.LOADING, "version": self.version}

    def request_unload(self, model_id: str) -> dict:
        self._placement(lambda: self.placement.drop(self.name, model_id))
        state = self.state_of(model_id)
        if state is None or protocol.is_load_failure(state):
            if self.states.pop(model_id, None) is not None:
                self._changed()
            return {"ok": f"{model_id}: not loaded", "model_id": model_id, "state": "unloaded", "version": self.version}
        if state != protocol.UNLOADING:
            self.states[model_id] = {"state": protocol.UNLOADING}
            self._changed()
            self._submit(self._unload, model_id)
        return {"ok": f"{model_id}: unloading", "model_id": model_id, "state": protocol.UNLOADING,
                "version": self.version}

    def request_switch(self, model_id: str, source: str) -> dict:
        if not self.serving.models.store.exists(source):
            return {"error": f"model {source!r} is not in the store", "model_id": model_id}
        if self.state_of(model_id) is None:
            return {"ok": f"{model_id}: not loaded here", "model_id": model_id, "state": "unloaded"}
        self._submit(self._switch, model_id, source)
        return {"ok": f"{model_id}: switching to {source}", "model_id": model_id, "state": "switching"}

    def reconcile(self) -> None:
        """Converge on this worker's placement (heartbeat thread, every few beats).

        Loads what it should serve and does not, unloads what it serves and
        should not, follows a switch it missed. Nothing while a change is
        under way; a missing placement is recorded from what is served.
        """
        if self._pending or any(not protocol.is_load_failure(c.get("state")) for c in list(self.states.values())):
            return
        try:
            wanted = self.placement.of(self.name)
        except (redis.RedisError, OSError):
            return
        loaded = self.serving.models.loaded()
        if wanted is None:
            self._placement(lambda: self.placement.record(self.name, {m: model.task for m, model in loaded.items()}))
            return
        for model_id, task in wanted.items():
            if model_id not in loaded and model_id not in self.states:
                log.info("placement: %s should serve %s; loading it", self.name, model_id)
                self.request_load(model_id, task)
        for model_id, model in loaded.items():
            if model_id not in wanted:
                log.info("placement: %s should no longer serve %s; unloading it", self.name, model_id)
                self.request_unload(model_id)
            elif self.source_of(model_id) != model.source:
                log.info("placement: %s is served from %s now; switching", model_id, self.source_of(model_id))
                self.request_switch(model_id, self.source_of(model_id))

    def _changed(self) -> None:
        """A model's state changed: count it, and write the registry entry soon."""
        with self._pending_lock:
            self.version += 1
        self.serving.heartbeat_poke()

    def _submit(self, action, *args) -> None:
        with self._pending_lock:
            self._pending += 1
        self._queue.put((action, *args))

    def _placement(self, write) -> None:
        try:
            write()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not record the placement of %s: %s", self.name, exc)

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
            finally:
                with self._pending_lock:
                    self._pending -= 1

    def _load(self, model_id: str, task: str | None, on_demand: bool = False) -> None:
        serving = self.serving
        try:
            self._make_room(model_id, on_demand)
            release_memory(serving.device)
            self.memory[model_id] = {"rss_before_load": rss_bytes(), "cuda_before_load": cuda_bytes(serving.device)}
            loaded = serving.models.load(model_id, task, self.source_of(model_id))
            self.memory[model_id]["weights_bytes"] = loaded.runner.memory_bytes()
            serving.batcher.add_model(loaded, on_ready=self._ready)
        except (ServiceError, ModelNotFound) as exc:
            self._failed(model_id, exc.message)
        except Exception as exc:  # noqa: BLE001 - a broken model directory must not kill the worker
            log.exception("loading %s failed", model_id)
            self._failed(model_id, f"{type(exc).__name__}: {exc}")

    def _failed(self, model_id: str, reason: str) -> None:
        log.error("cannot load %s: %s", model_id, reason)
        self.states[model_id] = {"state": protocol.LOAD_FAILED, "error": reason}
        self._placement(lambda: self.placement.drop(self.name, model_id))  # not retried by reconcile
        self._changed()

    def _ready(self, model_id: str) -> None:
        """Device thread: the model is calibrated; consume its queue from now on."""
        # Weights are memory-mapped and read lazily: only now, after the
        # calibration passes touched them, does RSS show the model (of the
        # embedding table, only the rows of tokens seen so far). What the
        # passes left in malloc's free lists goes back first: RSS then says
        # what the model holds, not what calibrating it held (a gc pass on
        # the device thread, once per load, after seconds of calibration).
        release_memory(self.serving.device)
        record = self.memory.setdefault(model_id, {})
        record.update(rss_after_load=rss_bytes(), cuda_after_load=cuda_bytes(self.serving.device))
        log.info("%s ready on %s: RSS %+.1f MB", model_id, self.serving.device,
                 (record["rss_after_load"] - record.get("rss_before_load", record["rss_after_load"])) / 1e6)

        with self._serve_lock:
            # An unload asked for while it calibrated wins: do not consume its queue.
            if self.states.get(model_id, {}).get("state") != protocol.LOADING:
                return
            self.serving.source.serve(model_id)
            self.states.pop(model_id, None)
        self._changed()

    def _unload(self, model_id: str) -> None:
        serving = self.serving
        with self._serve_lock:
            serving.source.unserve(model_id)  # no job of it arrives after this
        unstarted = serving.batcher.remove_model(model_id)
        if unstarted:
            serving.source.hand_back(unstarted)
            log.info("unloading %s: %d job(s) not started are back in its queue", model_id, len(unstarted))
        release_memory(serving.device)  # measured as after: what serving freed is not counted as returned
        before = rss_bytes()
        old = serving.models.unload(model_id)
        del old
        try:
            serving.batcher.between_batches(free_mkl_buffers)
        except Exception:  # noqa: BLE001 - a stopping device thread; the unload itself is done
            log.warning("unloading %s: MKL's buffers not freed", model_id, exc_info=True)
        release_memory(serving.device)
        after = rss_bytes()
        record = self.memory.setdefault(model_id, {})
        record.update(rss_before_unload=before, rss_after_unload=after, cuda_after_unload=cuda_bytes(serving.device))
        # What RSS grew by since its load: its load and serving, and any model loaded since.
        took = before - record.get("rss_before_load", before)
        if took > 0:  # (weights are memory-mapped: RSS holds the pages passes touched, not all of them)
            record["returned_fraction"] = round((before - after) / took, 3)
        log.info("unloaded %s: RSS %.1f -> %.1f MB (%s of the %.1f MB its load and serving took)", model_id,
                 before / 1e6, after / 1e6, record.get("returned_fraction"), took / 1e6)
        self.states.pop(model_id, None)
        self._changed()

    def _switch(self, model_id: str, source: str) -> None:
        serving = self.serving
        current = serving.models.loaded().get(model_id)
        if current is None:
            return
        if current.source == source and current.fingerprint == serving.models.store.describe(source).fingerprint:
            return  # already serving exactly these files
        self.states[model_id] = {"state": protocol.LOADED, "switching_to": source}
        try:
            new = serving.models.build(model_id, current.task, source)
            old = serving.batcher.replace_model(new)
            serving.models.replace(new)
            log.info("%s now served from %s (fingerprint %s -> %s)", model_id, source, current.fingerprint,
                     new.fingerprint)
            del old, current
            release_memory(serving.device)
        except Exception as exc:  # noqa: BLE001 - the old version keeps serving
            log.exception("switching %s to %s failed", model_id, source)
            self.states[model_id] = {"state": protocol.LOADED, "error": f"switch to {source} failed: {exc}"}
            self._changed()
            return
        self.states.pop(model_id, None)
        self._changed()

    def _make_room(self, model_id: str, on_demand: bool = False) -> None:
        """Past MAX_MODELS_PER_WORKER, unload the least recently used model that nothing waits for.

        A model with jobs in hand, or jobs in its queue that no other live
        worker would take, is never evicted: its jobs would wait for a
        worker that does not come. An on-demand load (AUTOLOAD: any client
        can cause one) never evicts a preloaded model either. When no loaded
        model may go, the load fails with the reason.
        """
        loaded = self.serving.models.loaded()
        cap = self.serving.settings.max_models_per_worker
        if model_id in loaded or len(loaded) < cap:
            return
        last_used = self.serving.batcher.last_used()
        source = self.serving.source
        # With fetching held, a job is either in its queue or in hand, never
        # between the two unseen; the victim stops being served before
        # fetching resumes.
        with self._serve_lock, source.settled():
            idle = [m for m in loaded if self.serving.batcher.in_hand(m) == 0 and not self._stranded_without(m)]
            protected = self.preloaded if on_demand else frozenset()
            victim = least_recently_used(idle, last_used, protected)
            if victim is None and idle:
                busy = sorted(set(loaded) - set(idle))
                raise ServiceError(
                    f"MAX_MODELS_PER_WORKER={cap} models are loaded on this worker, and a load on demand (AUTOLOAD) "
                    f"never unloads one of its PRELOAD_MODELS ({', '.join(sorted(protected & set(loaded)))})"
                    + (f"; {', '.join(busy)} have jobs waiting that no other worker serves" if busy else "")
                    + f". Load {model_id} with POST /models/load, raise MAX_MODELS_PER_WORKER, "
                    "or start another worker")
            if victim is None:
                raise ServiceError(f"MAX_MODELS_PER_WORKER={cap} models are loaded on this worker and each has jobs "
                                   "waiting that no other worker serves; unload one, or start another worker")
            source.unserve(victim)
        log.info("MAX_MODELS_PER_WORKER=%d: unloading %s, the least recently used, to load %s", cap, victim, model_id)
        self._placement(lambda: self.placement.drop(self.name, victim))
        self.states[victim] = {"state": protocol.UNLOADING}
        self._unload(victim)

    def _stranded_without(self, model_id: str) -> bool:
        """Would jobs wait with no consumer if this worker unloaded `model_id`?"""
        if not self.serving.source.waiting(model_id):
            return False
        try:
            entries = self._sources.hgetall(protocol.WORKERS_KEY)
        except (redis.RedisError, OSError):
            return True
        fresh_after = time.time() - 3 * self.serving.settings.heartbeat_s - 1
        for name, raw in entries.items():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if (name.decode() != self.name and entry.get("updated_at", 0) > fresh_after
                    and model_id in entry.get("models", {})):
                return False
        return True
