"""Names and conventions shared by the webapp and the workers.

The webapp publishes jobs by task name and reads results by key; it never
imports the worker's code. Everything both sides must agree on lives here.
"""

from __future__ import annotations

INFER_TASK = "tasks.infer"
QUEUE_PREFIX = "infer."

# Redis keys the service owns (results themselves use Celery's own
# `celery-task-meta-<id>` keys so any Celery client can read them).
KEY_PREFIX = "atf:"
WORKERS_KEY = KEY_PREFIX + "workers"  # hash: worker name -> JSON state
# Published (with the registry write, atomically) when a worker's models change:
# webapp processes drop what they cached of the registry at once.
REGISTRY_CHANNEL = KEY_PREFIX + "registry-changed"
JOB_KEY_PREFIX = KEY_PREFIX + "job:"  # hash per job: model_id, status, times
BATCH_STATS_PREFIX = KEY_PREFIX + "batches:"  # hash per model: batch counters (common/batchstats.py)
# Set: every model a job was queued for or a batch was run of (the models /metrics reports).
MODELS_KEY = KEY_PREFIX + "models"
REPLY_CHANNEL_PREFIX = KEY_PREFIX + "replies:"  # pub/sub channel per webapp process
MODEL_SOURCES_KEY = KEY_PREFIX + "model_sources"  # hash: model id -> directory serving it (after a switch)
AUTOLOAD_KEY_PREFIX = KEY_PREFIX + "autoload:"  # lock per model: one on-demand load at a time
# Messages no worker could read as a job, newest first (the last DEAD_LETTERS_KEPT).
DEAD_LETTERS_KEY = KEY_PREFIX + "dead-letters"
DEAD_LETTERS_KEPT = 1000

# Model states a worker reports in its registry entry.
LOADING, LOADED, UNLOADING, LOAD_FAILED = "loading", "loaded", "unloading", "error"


def load_failure(reason: str) -> str:
    """A target's state in an admin answer when its load failed: `error: <reason>`."""
    return f"{LOAD_FAILED}: {reason}"


def is_load_failure(state: str | None) -> bool:
    """Whether a model state says its load failed: LOAD_FAILED in a registry entry, load_failure() in an answer."""
    return state is not None and (state == LOAD_FAILED or state.startswith(LOAD_FAILED + ": "))


# Job states as the API names them.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)


def queue_for(model_id: str) -> str:
    """The broker queue that carries jobs for `model_id`."""
    return QUEUE_PREFIX + model_id


def model_for_queue(queue: str) -> str | None:
    """The model id behind an inference queue name, or None."""
    return queue[len(QUEUE_PREFIX):] if queue.startswith(QUEUE_PREFIX) else None


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def result_key(job_id: str) -> str:
    """Celery's Redis result backend key for a task id."""
    return "celery-task-meta-" + job_id


def batch_stats_key(model_id: str) -> str:
    return BATCH_STATS_PREFIX + model_id


def arguments_summary(model_id, inputs) -> str:
    """What a job's message, logs and task events show of its arguments: never the text.

    Celery puts `repr(kwargs)` in every task message (`kwargsrepr`) and in
    its task-received event, which Flower shows; a job's inputs are the
    user's data, so they are summarized: the model, the item count and the
    total characters of the item strings.
    """
    items = inputs if isinstance(inputs, list) else [inputs]
    chars = sum(_chars(item) for item in items)
    name = model_id[:64] if isinstance(model_id, str) else None
    return repr({"model_id": name, "items": len(items), "chars": chars})


def _chars(item) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):  # question answering: {"question", "context"}
        return sum(_chars(v) for v in item.values())
    if isinstance(item, list):
        return sum(_chars(v) for v in item)
    return 0
