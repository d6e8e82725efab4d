"""The service's Redis scripts, one file per operation (see common/deliveries.py, common/protocol.py).

Each runs atomically in Redis: a message is always in exactly one place
(a queue, or one holder's deliveries), and a job's record and result are
changed by one script at a time.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_HERE = Path(__file__).parent


@cache
def source(name: str) -> str:
    """The text of `<name>.lua`."""
    return (_HERE / f"{name}.lua").read_text()
