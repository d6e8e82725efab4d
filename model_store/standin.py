"""Stand-in models for benchmarks: a tiny BERT whose every batch takes a fixed device time.

A scaling benchmark must measure the system, not the CPU it shares with
the model: on this machine's two cores, eight workers running a real
model would only take turns. A stand-in model runs a tiny random BERT
(2 layers, 32 wide: about a millisecond) and then sleeps until the batch
has taken `forward_s` — like a GPU, the time is spent off the CPU, and a
batch of four costs what a batch of one does. Its config.json carries
`atf_stand_in_forward_s`; the loader picks StandInRunner for it
(model_store/loader/standin.py). Never a demo model: only
`python -m model_store build-stand-in` makes one, into the store it is given.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_KEY = "atf_stand_in_forward_s"


def build_stand_in(target: Path, tokenizer_from: Path, forward_s: float) -> None:
    """A feature-extraction stand-in at `target`, minilm's tokenizer, `forward_s` seconds per batch."""
    from model_store.tiny import _bert

    if not forward_s > 0:
        raise ValueError("forward_s must be positive")
    target.mkdir(parents=True, exist_ok=True)
    _bert("BertModel", target, tokenizer_from)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config[CONFIG_KEY] = forward_s
    config_path.write_text(json.dumps(config, indent=2))
