"""Response cache keys, shared by the webapp (reads) and the workers (writes).

A key is a hash of the model's fingerprint (it changes whenever the
weights behind a model id change: switch, reload, rebuilt directory), the
task, the input item and the parameters, both normalized (canonical JSON:
sorted keys, no whitespace). Entries are the item's output as JSON.
"""

from __future__ import annotations

import hashlib

import orjson

CACHE_PREFIX = "atf:cache:"


def cache_key(fingerprint: str, task: str, item, params: dict) -> str:
    """The Redis key (and in-process key) of one item's output."""
    canonical = orjson.dumps([fingerprint, task, item, params], option=orjson.OPT_SORT_KEYS)
    return CACHE_PREFIX + hashlib.sha256(canonical).hexdigest()[:40]
